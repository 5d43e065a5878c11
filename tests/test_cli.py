"""The `vivit-lens` command end to end: analyze and study on random checkpoints of other architectures (and the
shipped model), results.json checked against direct API calls, the report self-contained,
and bad input answered with a message and exit code 2, never a traceback."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from tests.test_analysis import make_checkpoint
from vivit_lens import HookedViViT, synthetic, video
from vivit_lens.cli import main
from vivit_lens.metrics import SignalRecovery
from vivit_lens.patching import get_act_patch_mlp_out

# Another architecture than the test default and the shipped model: 6 frames in tubelets of 3, a 40x40 input
# in 8x10 patches, 2 layers of 5 heads, 4 classes with their own names.
OTHER = dict(image_size=40, num_frames=6, tubelet_size=[3, 8, 10], hidden_size=40, num_hidden_layers=2,
             num_attention_heads=5, intermediate_size=64,
             labels={0: "strike-ish", 1: "gutter-ish", 2: "putt", 3: "noise"})  # fmt: skip


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    """(checkpoint folder, pair folder) of a random checkpoint of another architecture, pair rendered at its size."""
    root = tmp_path_factory.mktemp("other")
    ckpt = make_checkpoint(root / "ckpt", seed=2, **OTHER)
    synthetic.write_pair(root / "pair", "bowling", seed=5, frames=6, size=40)
    return ckpt, root / "pair"


def run(argv, capsys) -> tuple[int, str]:
    rc = main([str(a) for a in argv])
    return rc, capsys.readouterr().err


def _self_contained(html: str) -> None:
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I), "external resource"
    imgs = re.findall(r"<img[^>]*src=['\"]([^'\"]*)", html)
    assert imgs and all(re.match(r"data:image/(png|jpeg);base64,", s) for s in imgs)
    assert not re.search(r"<script[^>]+src=", html, re.I), "scripts are inline"


# analyze -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def other_run(other, tmp_path_factory):
    ckpt, pair = other
    out = tmp_path_factory.mktemp("other_out")
    rc = main(["analyze", str(pair / "clean.mp4"), str(pair / "corrupt.mp4"), "--model", str(ckpt), "--out", str(out),
               "--no-progress", "--quiet"])  # fmt: skip
    return rc, out, json.loads((out / "results.json").read_text()) if rc == 0 else None


def test_analyze_another_architecture_end_to_end(other_run):
    rc, out, res = other_run
    assert rc == 0
    assert res["meta"]["model"]["grid_shape"] == [2, 5, 4] and res["meta"]["model"]["n_heads"] == 5
    assert np.asarray(res["patching"]["heads"]).shape == (2, 5)
    assert res["region"]["source"].startswith("spec.json")
    _self_contained((out / "report.html").read_text())
    pngs = sorted(p.name for p in (out / "figures").iterdir())
    assert "recovery.png" in pngs and "cls_attention.png" in pngs
    assert all((out / "figures" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_results_json_matches_direct_api_calls(other, other_run):
    ckpt, pair = other
    _, _, res = other_run
    model = HookedViViT.from_pretrained(ckpt)
    clips = [video.load(pair / f"{k}.mp4", num_frames=model.cfg.num_frames) for k in ("clean", "corrupt")]
    clean, corrupt = (video.preprocess(c, model.processor) for c in clips)
    with torch.no_grad():
        values, idx = model(clean)[0].topk(4)
    top = res["predictions"]["clean"]
    assert [t["class_id"] for t in top] == idx.tolist()
    assert np.allclose([t["logit"] for t in top], values.tolist(), atol=1e-5)
    assert [t["label"] for t in top] == [OTHER["labels"][i] for i in idx.tolist()]
    # the reported recovery of MLP layer l is what `patching` gives when called directly
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, cr = model.run_with_cache(corrupt)
    metric = SignalRecovery.from_caches(cc, cr, "blocks.1.hook_resid_post", (0,))
    direct = get_act_patch_mlp_out(model, corrupt, cc, metric, positions="all", progress=False)
    assert np.allclose(res["patching"]["mlp"], direct.tolist(), atol=1e-4)
    assert "recovery(%) = 100" in res["patching"]["formula"]
    assert {"dla", "region_mass", "path_effect"} <= set(res["definitions"])
    assert not {"probe", "bootstrap_ci"} & set(res["definitions"]), "only the definitions a single pair uses"
    assert res["meta"]["versions"]["torch"] == torch.__version__


def test_analyze_options(other, tmp_path, capsys):
    ckpt, pair = other
    out = tmp_path / "o"
    rc, err = run(["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", ckpt, "--out", out,
                   "--class", "putt", "--region", "10,0,30,20", "--frames", "3:6", "--signal-layer", "0",
                   "--signal-positions", "all", "--top-heads", "2", "--composers", "1", "--no-progress"], capsys)
    assert rc == 0, err
    res = json.loads((out / "results.json").read_text())
    assert res["class"] == {"id": 2, "label": "putt", "source": "given"}
    assert res["region"]["box_xyxy"] == [10, 0, 30, 20] and res["region"]["frames"] == [3, 6]
    assert res["signal"] == {"layer": 0, "hook": "blocks.0.hook_resid_post", "positions": "all"}
    assert res["patching"]["layers"] == [0] and len(res["cls_attention"]["heads"]) == 2
    assert res["paths"]["direct_to_final"] is None and len(res["paths"]["into_mlps"]) == 1


@pytest.mark.slow
def test_analyze_with_no_arguments_uses_the_shipped_model(tmp_path):
    """The issue's headline command, as a user runs it: a subprocess, in an empty folder. (Its wall time is printed,
    not asserted: timings belong to benchmarks/, see benchmarks/RESULTS.md.)"""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "vivit_lens.cli", "analyze", "--no-progress"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    elapsed = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "vivit_lens_report"
    res = json.loads((out / "results.json").read_text())
    _self_contained((out / "report.html").read_text())
    assert res["class"]["label"] == "bowling", "the shipped model classifies the shipped strike as bowling"
    assert res["predictions"]["same_top1"], "both clips of the shipped pair get the same class"
    print(f"\nvivit-lens analyze (shipped model and pair): {elapsed:.0f} s wall")


# study -------------------------------------------------------------------------------------------
def test_study_generated_pairs(other, tmp_path, capsys):
    ckpt, _ = other
    out = tmp_path / "study"
    rc, err = run(["study", "--model", ckpt, "--pairs", "2", "--probe-pairs", "4", "--out", out, "--bootstrap", "300",
                   "--no-progress"], capsys)
    assert rc == 0, err
    st = json.loads((out / "results.json").read_text())
    assert set(st["domains"]) == {"bowling", "golf_putt"}, "the second domain answers 'does it generalise'"
    for dom, d in st["domains"].items():
        mlp = np.asarray([r["mlp_recovery"] for r in d["per_pair"]])
        assert np.allclose(d["ci"]["mlp_recovery"]["mean"], mlp.mean(0))
        assert np.all(np.asarray(d["ci"]["mlp_recovery"]["lo"]) <= mlp.mean(0) + 1e-9)
        assert len(st["probe"][dom]["records"]) == 2
    assert "300 resamples" in st["definitions"]["bootstrap_ci"]
    _self_contained((out / "report.html").read_text())


def test_study_pairs_csv(other, tmp_path, capsys):
    ckpt, pair = other
    for i in range(2):
        synthetic.write_pair(tmp_path / f"p{i}", "golf_putt", seed=20 + i, frames=6, size=40)
    with open(tmp_path / "pairs.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["clean", "corrupt", "domain"])
        w.writerows([[f"p{i}/clean.mp4", f"p{i}/corrupt.mp4", "golf"] for i in range(2)])
        w.writerow([str(pair / "clean.mp4"), str(pair / "corrupt.mp4"), "bowl"])
    rc, err = run(["study", "--model", ckpt, "--pairs-csv", tmp_path / "pairs.csv", "--out", tmp_path / "o",
                   "--bootstrap", "100", "--no-progress"], capsys)
    assert rc == 0, err
    st = json.loads((tmp_path / "o" / "results.json").read_text())
    assert {d: v["n"] for d, v in st["domains"].items()} == {"golf": 2, "bowl": 1}
    assert not st["probe"].get("bowl", {}).get("records"), "one pair is too few for a probe"


# Bad input ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bad_pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    synthetic.write_pair(root / "long", "bowling", seed=5, frames=9, size=40)
    synthetic.write_pair(root / "big", "bowling", seed=5, frames=6, size=48)
    (root / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypisom" + os.urandom(2000))
    (root / "pairs.csv").write_text("a,b\nx,y\n")
    return root


BAD = {
    "missing file": (lambda p, b: ["analyze", b / "nope.mp4", p / "corrupt.mp4"], "no such video file"),
    "corrupt file": (lambda p, b: ["analyze", b / "junk.mp4", p / "corrupt.mp4"], "clean video"),
    "different lengths": (lambda p, b: ["analyze", p / "clean.mp4", b / "long" / "corrupt.mp4"], "length"),
    "different sizes": (lambda p, b: ["analyze", p / "clean.mp4", b / "big" / "corrupt.mp4"], "frame size"),
    "unknown class": (lambda p, b: ["analyze", p / "clean.mp4", p / "corrupt.mp4", "--class", "curling"],
                      "not one of the model's 4 classes"),
    "one video only": (lambda p, b: ["analyze", p / "clean.mp4"], "both CLEAN and CORRUPT"),
    "bad region": (lambda p, b: ["analyze", p / "clean.mp4", p / "corrupt.mp4", "--region", "1,2,3"], "--region"),
    "region outside": (lambda p, b: ["analyze", p / "clean.mp4", p / "corrupt.mp4", "--region", "0,0,99,9"], "x0"),
    "bad frames": (lambda p, b: ["analyze", p / "clean.mp4", p / "corrupt.mp4", "--frames", "x"], "--frames"),
    "signal layer": (lambda p, b: ["analyze", p / "clean.mp4", p / "corrupt.mp4", "--signal-layer", "7"],
                     "--signal-layer"),
    "same clip twice": (lambda p, b: ["analyze", p / "clean.mp4", p / "clean.mp4"], "identical"),
    "unknown action": (lambda p, b: ["study", "--action", "curling", "--pairs", "1"], "unknown action"),
    "bad csv": (lambda p, b: ["study", "--pairs-csv", b / "pairs.csv"], "clean,corrupt"),
    "no pairs": (lambda p, b: ["study", "--pairs", "0"], "--pairs"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_exit_code_2_and_a_message(case, other, bad_pairs, tmp_path, capsys):
    ckpt, pair = other
    argv, message = BAD[case]
    rc, err = run([*argv(pair, bad_pairs), "--model", ckpt, "--out", tmp_path / "o", "--no-progress"], capsys)
    assert rc == 2, err
    assert message in err and "Traceback" not in err
    assert err.count("\n") <= 2, err


def test_missing_model_and_bad_usage(other, tmp_path, capsys):
    _, pair = other
    # --out in tmp_path: the default (./vivit_lens_report) may hold the README's first command's report
    out = ["--out", tmp_path / "out"]
    rc, err = run(["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", tmp_path / "nowhere", *out], capsys)
    assert rc == 2 and "cannot load the model" in err and "Traceback" not in err
    rc, err = run(["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", pair, *out], capsys)
    assert rc == 2 and "config.json" in err
    rc, err = run(["frobnicate"], capsys)
    assert rc == 2 and "invalid choice" in err
    rc, err = run([], capsys)
    assert rc == 2


def test_subprocess_bad_input_has_no_traceback(other, bad_pairs, tmp_path):
    """Through the real entry point: exit status 2 and one line on stderr."""
    ckpt, pair = other
    cmd = [sys.executable, "-m", "vivit_lens.cli", "analyze", str(bad_pairs / "junk.mp4"), str(pair / "corrupt.mp4"),
           "--model", str(ckpt), "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "error:" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "vivit_lens.cli", "--help"], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0 and "analyze" in proc.stdout and "study" in proc.stdout


def test_unexpected_error_exit_code_1(other, tmp_path, capsys, monkeypatch):
    ckpt, pair = other
    from vivit_lens import analysis

    def boom(*a, **k):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(analysis, "analyze_pair", boom)
    rc, err = run(["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", ckpt, "--out", tmp_path], capsys)
    assert rc == 1 and "unexpected error" in err and "simulated bug" in err
