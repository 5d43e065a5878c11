"""The reports a researcher reads: `vivit-lens analyze` and `study` on the shipped model, each output checked against
an independent source (results.json against the model, CSVs against results.json, the README's API block against a
hand-written patch), the terminal summary and progress output, and both reports opened in headless Chromium."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import pty
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests import browser
from tests.test_analysis import make_checkpoint
from vivit_lens import HookedViViT, analysis, synthetic, video
from vivit_lens.assets import pair_paths, tiny_model_path
from vivit_lens.cli import main
from vivit_lens.summary import num, pct

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z_0-9 ]*\}")


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """`vivit-lens analyze` with no videos (the shipped model and bowling pair), every format: (folder, stderr)."""
    out = tmp_path_factory.mktemp("report") / "analysis"
    rc, err = _run(["analyze", "--out", out, "--format", "html,json,csv", "--no-progress"])
    assert rc == 0, err
    return out, err


@pytest.fixture(scope="module")
def study_run(tmp_path_factory):
    """A tiny `vivit-lens study` on the shipped model: 3 bowling pairs, probes on 6."""
    out = tmp_path_factory.mktemp("report") / "study"
    rc, err = _run(["study", "--action", "bowling", "--pairs", "3", "--probe-pairs", "6", "--folds", "3",
                    "--bootstrap", "50", "--out", out, "--format", "html,json,csv", "--no-progress"])  # fmt: skip
    assert rc == 0, err
    return out, err


def _json(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())


def _visible_html(folder: Path) -> str:
    """The report's text a reader sees: no script, style or data URIs."""
    page = (folder / "report.html").read_text()
    page = re.sub(r"<(script|style)[^>]*>.*?</\1>", "", page, flags=re.S)
    return re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page)


def _strings(obj):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


# The terminal -------------------------------------------------------------------------------------
def test_analyze_ends_with_the_headline_numbers_and_where_each_output_went(shipped):
    out, err = shipped
    res = _json(out)
    heads = np.asarray(res["patching"]["heads"], float)
    l, h = np.unravel_index(np.nanargmax(heads), heads.shape)
    att = np.asarray(res["patching"]["attention"], float)
    assert f"strongest single head: L{l}H{h}, {heads[l, h]:.1f}% recovery" in err
    assert f"best attention block layer {int(att.argmax())} recovers {att.max():.1f}%" in err
    top = res["predictions"]["clean"][0]
    assert f"top-1: clean {top['label']} (p {top['prob']:.2f})" in err
    assert "strongest direct path: " in err and "Pearson" in err
    for key, path in (("report", out / "report.html"), ("results", out / "results.json"), ("tables (csv)", out / "csv")):
        assert re.search(rf"^{re.escape(key)}: +{re.escape(str(path))}", err, re.M), (key, err)
    assert not re.search(r"-0(\.0+)?%", err), "no negative zero"


def test_study_ends_with_the_headline_numbers(study_run):
    out, err = study_run
    st = _json(out)
    ci = st["domains"]["bowling"]["ci"]["attention_recovery"]
    l = int(np.argmax(ci["mean"]))
    assert f"bowling (3 pairs): best attention block layer {l} {ci['mean'][l]:.1f} [{ci['lo'][l]:.1f}, " in err
    assert f"report:        {out / 'report.html'}" in err and "outcome probe" in err


def test_negative_zero_is_printed_as_zero():
    assert pct(-0.04) == "0.0%" and num(-0.3, "{:.0f}") == "0" and num(-0.6, "{:.0f}") == "-1"
    assert pct(-1.25) == "-1.2%" and num(None) == "n/a" and num(float("nan")) == "n/a"


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    ckpt = make_checkpoint(root / "ckpt", seed=3)
    synthetic.write_pair(root / "pair", "bowling", seed=1, frames=8, size=32)
    return ckpt, root / "pair"


def _in_a_terminal(argv: list[str]) -> str:
    """What a 150-column terminal shows of `vivit-lens argv`: each line as it is left after carriage returns."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: stdin, stdout and stderr are the terminal
        os.execvpe(sys.executable, [sys.executable, "-m", "vivit_lens.cli", *argv],
                   {**os.environ, "COLUMNS": "150", "LINES": "40"})  # fmt: skip
    raw = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        raw += chunk
    os.waitpid(pid, 0)
    lines = raw.decode(errors="replace").replace("\r\n", "\n").split("\n")
    return "\n".join(line.rstrip("\r").split("\r")[-1].rstrip() for line in lines)


def test_progress_in_a_terminal_quiet_and_in_a_log(small_pair, tmp_path):
    ckpt, pair = small_pair
    args = ["analyze", str(pair / "clean.mp4"), str(pair / "corrupt.mp4"), "--model", str(ckpt), "--format", "json"]
    quiet = _in_a_terminal([*args, "--out", str(tmp_path / "q"), "--quiet"])
    assert quiet.strip() == "", f"--quiet printed: {quiet!r}"
    shown = _in_a_terminal([*args, "--out", str(tmp_path / "t")])
    visible = [line for line in shown.splitlines() if line.strip()]
    assert not any("%|" in line for line in visible), f"a progress bar was left on screen: {shown}"
    assert len(visible) == len(set(visible)), f"duplicate lines: {shown}"
    assert visible[-1].startswith("wrote them in") and any(line.startswith("summary:") for line in visible)
    proc = subprocess.run([sys.executable, "-m", "vivit_lens.cli", *args, "--out", str(tmp_path / "l")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "\x1b" not in proc.stderr and "\r" not in proc.stderr, "escape codes or carriage returns in a log"
    assert "summary:" in proc.stderr


# The outputs -------------------------------------------------------------------------------------
def test_no_unfilled_placeholders(shipped, study_run):
    for folder in (shipped[0], study_run[0]):
        assert not PLACEHOLDER.findall(_visible_html(folder)), PLACEHOLDER.findall(_visible_html(folder))[:5]
        found = [s for s in _strings(_json(folder)) if PLACEHOLDER.search(s)]
        assert not found, found[:3]
    assert PLACEHOLDER.findall("{n_boot} resamples, seed {seed}") == ["{n_boot}", "{seed}"], "the scan finds them"


def test_each_report_defines_only_what_it_uses(shipped, study_run):
    a, s = _json(shipped[0])["definitions"], _json(study_run[0])["definitions"]
    assert list(a) == list(analysis.ANALYSIS_TERMS) and list(s) == list(analysis.STUDY_TERMS)
    assert not {"bootstrap_ci", "probe", "transfer", "hidden"} & set(a), "a single pair has no bootstrap or probe"
    assert "50 resamples" in s["bootstrap_ci"] and "seed 0" in s["bootstrap_ci"]


def test_the_recovery_formula_is_stated_once(shipped, study_run):
    for folder in (shipped[0], study_run[0]):
        assert _visible_html(folder).count("recovery(%) = 100 *") == 1


def test_paper_is_cited_where_its_tables_are(shipped, study_run):
    for folder in (shipped[0], study_run[0]):
        text = _visible_html(folder)
        assert "Attention Gathers, MLPs Compose" in text and "arXiv:2603.11142" in text and "Sai Chereddy" in text
    assert "Table 1 of the paper" in _visible_html(shipped[0]) and "Table 2 of the paper" in _visible_html(shipped[0])
    help_text = subprocess.run([sys.executable, "-m", "vivit_lens.cli", "analyze", "--help"], capture_output=True,
                               text=True, timeout=120).stdout  # fmt: skip
    assert "2603.11142" in help_text and "Table 1" in help_text
    readme = (ROOT / "README.md").read_text()
    assert "2603.11142" in readme and "Attention Gathers, MLPs Compose" in readme


def test_unreachable_paths_are_masked_not_zero(shipped):
    out, _ = shipped
    res = _json(out)
    for entry in res["paths"]["into_mlps"]:
        l = entry["mlp_layer"]
        rows = entry["heads"]
        assert all(v is None for row in rows[l + 1 :] for v in row), "heads after the MLP cannot reach it"
        assert all(v is not None for row in rows[: l + 1] for v in row)
        assert all(t["layer"] <= l for t in entry["top_heads"])
    with open(out / "csv" / "paths.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    into = [r for r in rows if r["receiver"].endswith("input")]
    assert into and all((r["reachable"] == "False") == (r["effect"] == "") for r in into)
    assert any(r["reachable"] == "False" for r in into)
    assert {"paths_direct.png", "paths_into_mlps.png"} <= {p.name for p in (out / "figures").iterdir()}
    assert not (out / "figures" / "paths.png").exists(), "one figure per question, not five panels in one"


def test_region_box_in_one_convention(shipped):
    out, _ = shipped
    res = _json(out)
    spec = json.loads(pair_paths("bowling")[2].read_text())
    top, left, bottom, right = spec["box"]  # the synthetic renderer's order
    saved = res["meta"]["inputs"]["spec"]
    assert "box" not in saved and saved["box_xyxy_source_pixels"] == [left, top, right, bottom]
    text = _visible_html(out)
    x0, y0, x1, y1 = res["region"]["box_xyxy"]
    assert f"x0,y0,x1,y1 = ({x0}, {y0}, {x1}, {y1})" in text
    assert f"[{y0}, {x0}, {y1}, {x1}]" not in text and f"[{top}, {left}, {bottom}, {right}]" not in text


def test_dla_token_map_is_on_the_frame_grid(shipped):
    """map[t][row][col] is the token at (t, row, col): checked against the cache's per-position DLA."""
    out, _ = shipped
    res = _json(out)
    model = HookedViViT.from_pretrained(tiny_model_path())
    clean_path, _, _ = pair_paths("bowling")
    clean = video.preprocess(video.load(clean_path, num_frames=model.cfg.num_frames), model.processor)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
    per_pos = cache.dla_tokens(res["class"]["id"], model=model)[:, :, 0].sum((0, 1)).double()
    m = np.asarray(res["dla"]["tokens"]["clean"], float)
    assert list(m.shape) == list(model.cfg.grid_shape) == res["dla"]["tokens"]["grid_shape"]
    for t, r, c in [(0, 0, 0), (1, 2, 3), tuple(s - 1 for s in m.shape)]:
        pos = int(model.grid.thw_to_pos(t, r, c))
        assert abs(m[t, r, c] - float(per_pos[pos])) < 1e-5, (t, r, c, m[t, r, c], float(per_pos[pos]))


def test_csv_tables_hold_the_results(shipped, study_run):
    out, _ = shipped
    res = _json(out)
    with open(out / "csv" / "recovery.csv", newline="") as f:
        rec = {(int(r["layer"]), r["component"], r["metric"]): float(r["recovery"]) for r in csv.DictReader(f)}
    for l, (a, m) in enumerate(zip(res["patching"]["attention"], res["patching"]["mlp"])):
        assert abs(rec[(l, "attention", "signal")] - a) < 1e-9 and abs(rec[(l, "mlp", "signal")] - m) < 1e-9
    with open(out / "csv" / "heads.csv", newline="") as f:
        heads = list(csv.DictReader(f))
    assert len(heads) == np.size(res["patching"]["heads"])
    r0 = heads[5]
    assert float(r0["recovery"]) == pytest.approx(res["patching"]["heads"][int(r0["layer"])][int(r0["head"])])
    sout, _ = study_run
    st = _json(sout)
    with open(sout / "csv" / "per_pair.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["quantity"] == "mlp_recovery" and r["layer"] == "1"]
    assert len(rows) == 3
    assert np.mean([float(r["value"]) for r in rows]) == pytest.approx(st["domains"]["bowling"]["ci"]["mlp_recovery"]
                                                                        ["mean"][1])  # fmt: skip


def test_format_chooses_the_outputs(small_pair, tmp_path):
    ckpt, pair = small_pair
    base = ["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", ckpt, "--no-progress"]
    rc, err = _run([*base, "--out", tmp_path / "j", "--format", "json"])
    assert rc == 0, err
    assert sorted(p.name for p in (tmp_path / "j").iterdir()) == ["results.json"]
    assert "results:" in err and "report:" not in err
    rc, err = _run([*base, "--out", tmp_path / "x", "--format", "html,pdf"])
    assert rc == 2 and "--format" in err and "Traceback" not in err and not (tmp_path / "x").exists()


# The README's API block ---------------------------------------------------------------------------
def test_readme_api_block_is_the_tested_example_and_runs_on_the_shipped_model():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## The API in a dozen lines"):]
    block = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    example = ROOT / "examples" / "api_in_ten_lines.py"
    assert block == example.read_text(), "README.md and examples/api_in_ten_lines.py differ"
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        ns = runpy.run_path(str(example))
    model, heads = ns["model"], ns["heads"]
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    # the strongest head, patched by hand (its clean hook_z into the corrupt run), scored from the residuals
    l, h = np.unravel_index(int(heads.abs().argmax()), heads.shape)
    by_hand = _recovery_by_hand(model, ns, int(l), int(h))
    assert abs(by_hand - float(heads[l, h])) < 1e-3, (by_hand, float(heads[l, h]))


def _recovery_by_hand(model, ns, l: int, h: int) -> float:
    """% of the clean - corrupt [CLS] residual signal recovered, computed from the residuals directly."""
    hook = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    z = ns["clean_cache"][f"blocks.{l}.attn.hook_z"]
    saved = {}

    def patch(act, hook):
        act[:, :, h] = z[:, :, h]
        return act

    def keep(act, hook):
        saved["r"] = act[:, 0].detach().double().clone()

    with torch.no_grad():
        model.run_with_hooks(ns["corrupt"], fwd_hooks=[(f"blocks.{l}.attn.hook_z", patch), (hook, keep)])
    clean, corrupt = (ns[k][hook][:, 0].double() for k in ("clean_cache", "corrupt_cache"))
    d = clean - corrupt
    return float(100 * ((saved["r"] - corrupt) * d).sum() / (d * d).sum())


# In a browser ------------------------------------------------------------------------------------
needs_chromium = pytest.mark.skipif(browser.CHROMIUM is None, reason="no chromium on PATH (.ci/run installs the "
                                    "Debian package); the reports are not opened in a browser")  # fmt: skip
ANALYSIS_SECTIONS = ("summary", "explore", "model", "predictions", "cascade", "dla", "attention", "ablation",
                     "patching", "paths", "attribution", "definitions", "provenance")
STUDY_SECTIONS = ("summary", "pairs-explorer", "recovery", "cascade", "probe", "scalars", "pairs", "definitions",
                  "provenance")


@needs_chromium
def test_analysis_report_in_chromium(shipped):
    result = browser.selftest(shipped[0] / "report.html")
    failed = {k: v for k, v in result["checks"].items() if not v["ok"]}
    assert not failed, failed
    for name in ("images", "scrubber_changes_overlay", "overlay_kinds_differ", "head_click_changes_attention",
                 "head_hover_value", "graph_hover_value", "graph_click_head", "no_errors"):
        assert name in result["checks"], f"the self-test did not run {name}"
    assert not result["console"], result["console"]
    missing = [s for s in ANALYSIS_SECTIONS if s not in result["layout"]["at"]]
    assert not missing, missing
    assert {"vl-scrubber", "vl-heads", "vl-graph"} <= set(result["layout"]["at"])


@needs_chromium
def test_study_report_in_chromium(study_run):
    result = browser.selftest(study_run[0] / "report.html")
    failed = {k: v for k, v in result["checks"].items() if not v["ok"]}
    assert not failed, failed
    assert {"pair_select", "quantity_change", "ci_cell_opens_pairs", "pair_rows", "images"} <= set(result["checks"])
    assert not result["console"], result["console"]
    missing = [s for s in STUDY_SECTIONS if s not in result["layout"]["at"]]
    assert not missing, missing


def test_report_is_self_contained_and_small(shipped):
    page = (shipped[0] / "report.html").read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I), "external resource"
    assert not re.search(r"<script[^>]+src=", page, re.I) and "<link" not in page.lower()
    imgs = re.findall(r"<img[^>]*src='([^']*)'", page)
    assert imgs and all(re.match(r"data:image/(png|jpeg);base64,", s) for s in imgs)
    assert len(page.encode()) < 4_000_000, f"report.html is {len(page.encode()) / 1e6:.1f} MB"


def test_docs_screenshot_is_a_full_colour_picture_of_the_report():
    """docs/report.png is a browser screenshot (tests/browser.py), not a palette-reduced composite."""
    from PIL import Image

    img = Image.open(ROOT / "docs" / "report.png")
    assert img.mode in ("RGB", "RGBA"), img.mode
    assert len(img.convert("RGB").getcolors(1 << 24)) > 256, "more colours than a palette holds"
