"""Hostile input and faults, one test per category: outputs complete or absent, config and checkpoint validation,
the memory guard, numeric and dtype guards, the CLI's user-error paths, and the API's edges (video.save, hub).

Heavy steps (the analysis itself) are replaced by stubs where only the CLI's handling is under test, so every
test here runs in seconds on the small random checkpoints of the other test files.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import pixels
from tests.test_analysis import make_checkpoint
from vivit_lens import (
    CheckpointError,
    CheckpointNotFoundError,
    HookedViViT,
    InputError,
    analysis,
    report,
    synthetic,
    video,
)
from vivit_lens.cli import main as lens_main
from vivit_lens.config import ConfigError, ProcessorConfig, ViViTConfig
from weights_convert.convert import main as convert_main


@pytest.fixture(scope="module")
def ckpt_and_pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("hard")
    ckpt = make_checkpoint(root / "ckpt", seed=1)
    synthetic.write_pair(root / "pair", "bowling", seed=5, frames=8, size=32)
    return ckpt, root / "pair"


@pytest.fixture
def stub_analysis(monkeypatch):
    """The analysis and report steps replaced by stubs that record their calls (the CLI's handling is tested)."""
    calls = {"analyze": [], "study": []}

    def analyze_pair(*a, **k):
        calls["analyze"].append(k)
        warnings.warn("a library warning")
        return {"timings_s": {}}

    def study(model, pairs, **k):
        calls["study"].append((pairs, k))
        return {"warnings": [], "domains": {}}

    def write(res, out, **k):
        from pathlib import Path

        out = Path(out)
        (out / "figures").mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps({"new": True}))
        (out / "report.html").write_text("<html></html>")
        return {"results": out / "results.json", "report": out / "report.html", "figures": out / "figures"}

    monkeypatch.setattr(analysis, "analyze_pair", analyze_pair)
    monkeypatch.setattr(analysis, "study", study)
    monkeypatch.setattr(analysis, "generate_pairs", lambda model, a, n, **k: [object()] * n)
    monkeypatch.setattr(report, "write_analysis", write)
    monkeypatch.setattr(report, "write_study", write)
    return calls


def run(main, argv, capsys) -> tuple[int, str, str]:
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def assert_one_line_error(rc: int, err: str, needle: str) -> None:
    assert rc == 2, err
    assert "Traceback" not in err and err.count("\n") == 1, err
    assert needle in err, err


# 1. Outputs that are complete or absent ----------------------------------------------------------
def test_outputs_are_complete_or_absent(ckpt_and_pair, stub_analysis, tmp_path, capsys, monkeypatch):
    ckpt, pair = ckpt_and_pair
    argv = ["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", ckpt, "--no-progress"]
    real_write = report.write_analysis

    def interrupted(res, out, **k):  # Ctrl-C after results.json, before the report
        real_write(res, out, **k)
        (out / "report.html").unlink()
        raise KeyboardInterrupt

    out = tmp_path / "first"
    monkeypatch.setattr(report, "write_analysis", interrupted)
    rc, _, err = run(lens_main, [*argv, "--out", out], capsys)
    assert rc == 130 and not out.exists(), "an interrupted first run leaves no folder"
    assert list(tmp_path.iterdir()) == [], "nor its temporary folder"

    monkeypatch.setattr(report, "write_analysis", real_write)
    stub_analysis["analyze"].clear()
    old = tmp_path / "old"
    old.mkdir()
    (old / "results.json").write_text('{"old": true}')
    (old / "report.html").write_text("old report")
    rc, _, err = run(lens_main, [*argv, "--out", old], capsys)
    assert_one_line_error(rc, err, "--overwrite")
    assert not stub_analysis["analyze"], "refused before any compute"
    monkeypatch.setattr(report, "write_analysis", interrupted)
    rc, _, err = run(lens_main, [*argv, "--out", old, "--overwrite"], capsys)
    assert rc == 130 and (old / "results.json").read_text() == '{"old": true}', "the old output is untouched"
    monkeypatch.setattr(report, "write_analysis", real_write)
    rc, _, err = run(lens_main, [*argv, "--out", old, "--overwrite"], capsys)
    assert rc == 0, err
    assert json.loads((old / "results.json").read_text()) == {"new": True} and (old / "report.html").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"], "replaced in place, nothing left beside it"
    rc, _, err = run(lens_main, [*argv, "--out", pair, "--overwrite"], capsys)
    assert_one_line_error(rc, err, f"refusing to replace {pair}: it holds")
    monkeypatch.chdir(old)
    rc, _, err = run(lens_main, [*argv, "--out", ".", "--overwrite"], capsys)
    assert_one_line_error(rc, err, "refusing to replace")

    # The output path is checked before anything is computed.
    stub_analysis["analyze"].clear()
    (tmp_path / "file").write_text("x")
    bad_outs = {tmp_path / "file": "is a file", tmp_path / "file" / "under": "is a file, not a folder"}
    if sys.platform.startswith("linux"):
        bad_outs["/proc/vivit_lens_out"] = "cannot write into /proc"
    for bad, needle in bad_outs.items():
        for cmd in (argv, ["study", "--model", ckpt, "--pairs", "10", "--no-progress"]):
            rc, _, err = run(lens_main, [*cmd, "--out", bad], capsys)
            assert_one_line_error(rc, err, needle)
    assert not stub_analysis["analyze"] and not stub_analysis["study"]


def test_convert_output_is_complete_or_absent(ckpt_and_pair, tmp_path, capsys, monkeypatch):
    import errno

    from vivit_lens import convert

    ckpt, _ = ckpt_and_pair

    def disk_full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(convert, "save_file", disk_full)
    out = tmp_path / "lens"
    rc, _, err = run(convert_main, ["to-lens", ckpt, out], capsys)
    assert_one_line_error(rc, err, "No space left on device")
    assert not out.exists() and list(tmp_path.iterdir()) == [], "no weights without a config, no partial folder"
    monkeypatch.undo()

    out.mkdir()
    (out / "stale.txt").write_text("x")
    rc, _, err = run(convert_main, ["to-lens", ckpt, out], capsys)
    assert_one_line_error(rc, err, "--overwrite")
    rc, _, err = run(convert_main, ["to-lens", ckpt, out, "--overwrite"], capsys)
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "preprocessor_config.json",
                                                     "vivit_lens.safetensors"]  # fmt: skip


# 2. Config and checkpoint validation -----------------------------------------------------------
BAD_CONFIGS = {
    "num_attention_heads": (0, "config.json: num_attention_heads must be a positive int, got 0"),
    "hidden_size": (-48, "hidden_size must be a positive int, got -48"),
    "num_hidden_layers": ("3", "num_hidden_layers must be a positive int, got '3'"),
    "num_frames": (8.5, "num_frames must be a positive int, got 8.5"),
    "layer_norm_eps": (0, "layer_norm_eps must be a positive number"),
    "hidden_act": ("gelu_slow", "hidden_act 'gelu_slow' is not supported"),
    "image_size": ([32], "image_size must be a positive int or a pair"),
    "tubelet_size": ([2, 0, 8], "tubelet_size must be three positive ints"),
    "qkv_bias": ("yes", "qkv_bias must be true or false"),
    "num_labels": (0, "num_labels must be a positive int"),
}


@pytest.mark.parametrize("field", list(BAD_CONFIGS))
def test_config_fields_are_checked_with_the_file_and_field_named(field, ckpt_and_pair, tmp_path):
    ckpt, _ = ckpt_and_pair
    folder = tmp_path / "ckpt"
    shutil.copytree(ckpt, folder)
    cfg = json.loads((folder / "config.json").read_text())
    value, message = BAD_CONFIGS[field]
    cfg[field] = value
    if field == "num_labels":
        cfg.pop("id2label"), cfg.pop("label2id")
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError) as e:
        HookedViViT.from_pretrained(folder)
    assert str(e.value).startswith(str(folder / "config.json")) and message in str(e.value)


def test_checkpoint_and_side_files_are_validated(ckpt_and_pair, tmp_path):
    ckpt, _ = ckpt_and_pair

    def copy(name):
        folder = tmp_path / name
        shutil.copytree(ckpt, folder)
        return folder

    # absurd sizes are refused from the parameter count, before anything is allocated
    with pytest.raises(ConfigError, match=r"implies 7\.\d+e\+15 parameters"):
        ViViTConfig(num_hidden_layers=1_000_000_000)
    assert ViViTConfig(id2label={i: str(i) for i in range(400)}).n_parameters == 88_954_000  # HF's count, ViViT-B
    with pytest.raises(ConfigError, match="hidden_size 50 is not divisible by num_attention_heads 4"):
        ViViTConfig(hidden_size=50, num_attention_heads=4)

    f = copy("latin1")
    (f / "config.json").write_bytes(b'{"model_type": "vivit", "id2label": {"0": "caf\xe9"}}')
    with pytest.raises(ConfigError, match=r"config\.json: not UTF-8 text"):
        HookedViViT.from_pretrained(f)

    f = copy("crop")
    proc = json.loads((f / "preprocessor_config.json").read_text())
    proc["crop_size"] = {"height": 224, "width": 224}
    (f / "preprocessor_config.json").write_text(json.dumps(proc))
    with pytest.raises(ConfigError, match=r"preprocessor_config\.json: crop_size \(224, 224\) does not match the "
                                          r"model's image_size \(32, 32\)"):  # fmt: skip
        HookedViViT.from_pretrained(f)
    (f / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"preprocessor_config\.json: not valid JSON"):
        HookedViViT.from_pretrained(f)
    (f / "preprocessor_config.json").write_text(json.dumps({**proc, "image_std": [0.5, 0, 0.5]}))
    with pytest.raises(ConfigError, match=r"preprocessor_config\.json: image_std must be positive"):
        HookedViViT.from_pretrained(f)

    f = copy("index")
    (f / "model.safetensors.index.json").write_text("{oops")
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json: cannot read it as JSON"):
        HookedViViT.from_pretrained(f)
    (f / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}}))
    with pytest.raises(CheckpointError, match=r"index\.json: expected a JSON object with a 'weight_map'"):
        HookedViViT.from_pretrained(f)
    (f / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "../ckpt/model.safetensors"}}))
    with pytest.raises(CheckpointError, match="lies outside the checkpoint folder"):
        HookedViViT.from_pretrained(f)

    state = load_file(ckpt / "model.safetensors")
    name = "vivit.encoder.layer.1.intermediate.dense.weight"
    for damage, message in ((lambda t: t.index_fill(0, torch.tensor([3]), float("nan")), "holds 48 NaN or infinite"),
                            (lambda t: t.to(torch.int32), "dtype torch.int32")):  # fmt: skip
        f = copy(f"w{message[:3]}")
        save_file({**state, name: damage(state[name]).contiguous()}, f / "model.safetensors")
        with pytest.raises(CheckpointError, match=rf"model\.safetensors: tensor {name} .*{message}"):
            HookedViViT.from_pretrained(f)


# 3. The memory guard ---------------------------------------------------------------------------
def test_memory_guard_estimates_and_refuses_before_compute(small_model, monkeypatch):
    from vivit_lens import memory

    x = pixels(small_model.cfg, batch=2)
    _, cache = small_model.run_with_cache(x)
    held = sum(t.numel() * t.element_size() for t in cache.values())
    assert memory.cache_bytes(small_model, small_model.hook_names, 2) == held, "the estimate is what a cache holds"
    names = ["blocks.1.hook_resid_post", "blocks.2.attn.hook_pattern"]
    _, part = small_model.run_with_cache(x, names_filter=names, stop_at_layer=2)
    assert memory.cache_bytes(small_model, names, 2, stop_at_layer=2) == sum(
        t.numel() * t.element_size() for t in part.values())

    with torch.device("meta"):  # ViViT-B's shapes, nothing allocated
        vivit_b = HookedViViT(ViViTConfig(id2label={i: str(i) for i in range(400)}))
    patterns = [n for n in vivit_b.hook_names if n.endswith("hook_pattern")]
    assert memory.cache_bytes(vivit_b, patterns, 8) / 2**30 == pytest.approx(42.2, abs=0.05)

    ran = []
    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 10 * 2**20)  # 10 MiB free
    with pytest.raises(memory.MemoryGuardError, match=r"a model of 8\.9e\+07 parameters would hold about 0\.3 GiB"):
        HookedViViT(ViViTConfig(id2label={i: str(i) for i in range(400)}))
    with small_model.hooks([("hook_embed", lambda t, hook: ran.append(1))]):
        with pytest.raises(memory.MemoryGuardError, match=r"would hold about .* GiB.*names_filter.*smaller batch"):
            small_model.run_with_cache(pixels(small_model.cfg, batch=64))
    assert not ran, "refused before the forward pass"
    small_model.run_with_cache(x, names_filter="blocks.0.hook_resid_pre")  # a small cache fits
    small_model.run_with_cache(pixels(small_model.cfg, batch=64), check_memory=False)
    monkeypatch.setenv(memory.ENV_OVERRIDE, "1")
    small_model.run_with_cache(pixels(small_model.cfg, batch=64))


def test_memory_guard_on_patching_and_attribution_entry_points(small_model, monkeypatch):
    from vivit_lens import memory
    from vivit_lens.attribution import attribution_patch
    from vivit_lens.metrics import Logit
    from vivit_lens.patching import Patch, get_act_patch_attn_head_out_all_pos, patch_sweep, run_patches

    clean, corrupt = pixels(small_model.cfg, batch=1, seed=1), pixels(small_model.cfg, batch=1, seed=2)
    _, cache = small_model.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
    bad = dict(cache)
    bad["blocks.1.attn.hook_z"] = cache["blocks.1.attn.hook_z"].clone().index_fill(1, torch.tensor([2]), float("nan"))
    with pytest.raises(ValueError, match=r"the source cache holds NaN or inf at 'blocks\.1\.attn\.hook_z'"):
        get_act_patch_attn_head_out_all_pos(small_model, corrupt, bad, Logit(0), progress=False)
    with pytest.raises(ValueError, match="source cache holds NaN"):
        run_patches(small_model, corrupt, bad, [Patch("blocks.1.attn.hook_z")], Logit(0), progress=False)

    monkeypatch.setattr(memory, "available_bytes", lambda device=None: 1000)
    calls = []
    monkeypatch.setattr(small_model, "run_with_cache", lambda *a, **k: calls.append(1))
    for run, what in (
        (lambda: patch_sweep(small_model, clean, corrupt, Logit(0), "pattern", batch_size=64), "this patching sweep"),
        (lambda: get_act_patch_attn_head_out_all_pos(small_model, corrupt, cache, Logit(0)), "this patching sweep"),
        (lambda: run_patches(small_model, corrupt, cache, [Patch("blocks.1.attn.hook_z")], Logit(0)),
         "this patching sweep"),
        (lambda: attribution_patch(small_model, clean, corrupt, Logit(0)), "attribution_patch"),
    ):  # fmt: skip
        with pytest.raises(memory.MemoryGuardError, match=rf"{what} would hold about"):
            run()
    assert not calls, "refused before any forward pass"


# 4. Numeric and dtype guards -------------------------------------------------------------------
def test_numeric_and_dtype_guards(small_model):
    m = small_model
    x = pixels(m.cfg, batch=2)
    bad = x.clone()
    bad[1, 5, 2, 3, 4] = float("nan")
    bad[1, 6, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match=r"2 NaN or infinite value\(s\), first at clip 1, frame 5, channel 2 .*"
                                         r"frames affected: 5, 6"):  # fmt: skip
        m(bad)
    huge = torch.full_like(x, 3e38)  # finite values whose sum overflows: the exact search runs and finds none
    assert torch.isinf(huge.sum()) and torch.isfinite(huge).all()
    m(huge, stop_at_layer=0)

    def to_double(t, hook):
        return t.double()

    with pytest.raises(InputError, match=r"hook 'to_double' on blocks\.1\.hook_mlp_out returned a torch\.float64"):
        m.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_mlp_out", to_double)])
    with pytest.raises(InputError, match=r"hook '<lambda>' on blocks\.0\.attn\.hook_z returned list"):
        m.run_with_hooks(x, fwd_hooks=[("blocks.0.attn.hook_z", lambda t, hook: [t])])
    resid = m(x, stop_at_layer=1)
    with pytest.raises(InputError, match=r"residual must be torch\.float32 .* got torch\.float64"):
        m(resid.double(), start_at_layer=1)

    for p in m.parameters():
        p.grad = None
    first = next(m.parameters())
    first.grad = torch.ones_like(first)
    _, cache = m.run_with_cache(x, incl_bwd=True)
    _, again = m.run_with_cache(x, incl_bwd=True)
    assert "blocks.0.hook_resid_pre_grad" in cache and torch.equal(cache["hook_embed_grad"], again["hook_embed_grad"])
    assert all(p.grad is None for p in list(m.parameters())[1:]), "no parameter keeps a gradient"
    assert torch.equal(first.grad, torch.ones_like(first)), "an earlier gradient is left as it was"
    first.grad = None
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        m.run_with_cache(x, incl_bwd=True)


# 5. The CLI --------------------------------------------------------------------------------------
def test_cli_quiet_version_progress_and_small_study_warning(ckpt_and_pair, stub_analysis, tmp_path, capsys,
                                                             recwarn):
    ckpt, pair = ckpt_and_pair
    rc, out, err = run(lens_main, ["--version"], capsys)
    assert rc == 0 and out.strip() == f"vivit-lens {__import__('vivit_lens').__version__}"

    argv = ["analyze", pair / "clean.mp4", pair / "corrupt.mp4", "--model", ckpt]
    rc, _, err = run(lens_main, [*argv, "--out", tmp_path / "a"], capsys)
    assert rc == 0 and "wrote" in err and [w for w in recwarn if "a library warning" in str(w.message)]
    recwarn.clear()
    assert stub_analysis["analyze"][-1]["progress"] is False, "stderr is not a terminal here: no progress bars"
    rc, out, err = run(lens_main, [*argv, "--out", tmp_path / "b", "--quiet"], capsys)
    assert rc == 0 and out == "" and err == "", "--quiet prints nothing but errors"
    assert not [w for w in recwarn if "a library warning" in str(w.message)], "nor warnings"

    rc, _, err = run(lens_main, ["study", "--model", ckpt, "--pairs", "3", "--out", tmp_path / "s"], capsys)
    assert rc == 0 and "3 analysed pair(s)" in err and "not meaningful" in err
    rc, _, err = run(lens_main, ["study", "--model", ckpt, "--pairs", "3", "--out", tmp_path / "t", "--quiet"],
                     capsys)  # fmt: skip
    assert rc == 0 and err == ""


def _bad_csvs(root, pair):
    rows = {
        "short row": "clean,corrupt\nclean.mp4,corrupt.mp4\nclean.mp4\n",
        "long row": "clean,corrupt\nclean.mp4,corrupt.mp4,extra\n",
        "same file": "clean,corrupt,domain\nclean.mp4,corrupt.mp4,a\n\nclean.mp4,./clean.mp4,a\n",
        "missing video": "clean,corrupt\nclean.mp4,nope.mp4\n",
        "no header": "x,y\n1,2\n",
        "header only": "clean,corrupt\n",
        "not utf-8": b"clean,corrupt\ncaf\xe9.mp4,b.mp4\n",
    }
    out = {}
    for name, text in rows.items():
        f = pair / f"{name.replace(' ', '_')}.csv"
        f.write_bytes(text if isinstance(text, bytes) else text.encode())
        out[name] = f
    return out


def test_every_cli_user_error_is_exit_2_and_one_line(ckpt_and_pair, stub_analysis, tmp_path, capsys):
    """Every user-error path of `vivit-lens` and `vivit-convert`: exit code 2, one message line, no traceback."""
    ckpt, pair = ckpt_and_pair
    csvs = _bad_csvs(tmp_path, pair)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("x")
    bad_ckpt = tmp_path / "bad_ckpt"
    shutil.copytree(ckpt, bad_ckpt)
    cfg = json.loads((bad_ckpt / "config.json").read_text())
    (bad_ckpt / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 0}))
    clean, corrupt = pair / "clean.mp4", pair / "corrupt.mp4"
    an = ["analyze", clean, corrupt, "--model", ckpt]
    st = ["study", "--model", ckpt]
    lens_cases = {
        "unknown command": (["frobnicate"], "invalid choice"),
        "unknown option": ([*an, "--frobnicate"], "unrecognized arguments"),
        "not an int": ([*an, "--batch-size", "x"], "invalid int value"),
        "batch size": ([*an, "--batch-size", "0"], "--batch-size"),
        "one video": (["analyze", clean, "--model", ckpt], "both CLEAN and CORRUPT"),
        "missing video": (["analyze", clean, pair / "nope.mp4", "--model", ckpt], "no such video file"),
        "top heads": ([*an, "--top-heads", "0"], "--top-heads"),
        "bad model config": (["analyze", clean, corrupt, "--model", bad_ckpt], "num_attention_heads must be"),
        "empty model": (["analyze", clean, corrupt, "--model", ""], "cannot load the model"),
        "unknown class": ([*an, "--class", "curling"], "not one of the model's"),
        "signal layer": ([*an, "--signal-layer", "9"], "--signal-layer"),
        "region": ([*an, "--region", "1,2"], "--region"),
        "frames": ([*an, "--frames", "a:b"], "--frames"),
        "busy out": ([*an, "--out", tmp_path / "busy"], "--overwrite"),
        "pairs": ([*st, "--pairs", "0"], "--pairs must be"),
        "bootstrap": ([*st, "--bootstrap", "0"], "--bootstrap"),
        "action": ([*st, "--action", "curling"], "unknown action"),
        "csv and pairs": ([*st, "--pairs-csv", csvs["short row"], "--pairs", "3"], "cannot be combined"),
        "csv and action": ([*st, "--pairs-csv", csvs["short row"], "--action", "bowling"], "cannot be combined"),
        "missing csv": ([*st, "--pairs-csv", tmp_path / "nope.csv"], "no such CSV file"),
        "short row": ([*st, "--pairs-csv", csvs["short row"]], "short_row.csv, line 3: no corrupt path"),
        "long row": ([*st, "--pairs-csv", csvs["long row"]], "long_row.csv, line 2: 3 fields"),
        "same file": ([*st, "--pairs-csv", csvs["same file"]], "same_file.csv, line 4: clean and corrupt are the same"),
        "csv video": ([*st, "--pairs-csv", csvs["missing video"]], "line 2: no such video file"),
        "no header": ([*st, "--pairs-csv", csvs["no header"]], "clean,corrupt"),
        "header only": ([*st, "--pairs-csv", csvs["header only"]], "no pairs"),
        "not utf-8": ([*st, "--pairs-csv", csvs["not utf-8"]], "cannot read"),
    }
    for case, (argv, needle) in lens_cases.items():
        if argv[0] in ("analyze", "study"):
            argv = [*argv, "--no-progress"] + ([] if "--out" in argv else ["--out", tmp_path / "o"])
        rc, _, err = run(lens_main, argv, capsys)
        assert rc == 2, (case, err)
        assert "Traceback" not in err and needle in err, (case, err)
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, (case, err)
        if needle not in ("invalid choice", "unrecognized arguments", "invalid int value"):  # argparse adds usage
            assert err.count("\n") == 1, (case, err)
    assert not stub_analysis["analyze"] and not stub_analysis["study"], "no error path reached the analysis"
    assert not (tmp_path / "o").exists(), "nor wrote anything"

    convert_cases = {
        "unknown direction": (["to-onnx", ckpt, tmp_path / "c"], "invalid choice"),
        "missing source": (["to-lens", tmp_path / "nowhere", tmp_path / "c"], "no checkpoint folder"),
        "bad config": (["to-lens", bad_ckpt, tmp_path / "c"], "num_attention_heads must be"),
        "busy out": (["to-hf", ckpt, tmp_path / "busy"], "--overwrite"),
        "out is a file": (["to-hf", ckpt, tmp_path / "busy" / "x"], "is a file"),
        "empty source": (["to-hf", "", tmp_path / "c"], "expected a checkpoint folder"),
    }
    for case, (argv, needle) in convert_cases.items():
        rc, _, err = run(convert_main, argv, capsys)
        assert rc == 2 and "Traceback" not in err and needle in err, (case, err)
        assert len([line for line in err.splitlines() if "error:" in line]) == 1, (case, err)
    assert not (tmp_path / "c").exists()


# 6. The rest: video.save, API edges, the hub without network -----------------------------------
def test_video_save_checks(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    with pytest.raises(video.VideoError, match=r"nope/x\.mp4: cannot write it, the folder .*nope does not exist"):
        video.save(frames, tmp_path / "nope" / "x.mp4", 8)
    with pytest.raises(ValueError, match=r"x\.mp4: expected uint8 pixel values 0\.\.255, got dtype float32"):
        video.save(frames.astype(np.float32), tmp_path / "x.mp4", 8)
    with pytest.raises(ValueError, match=r"x\.mp4: expected uint8 frames .* got shape \(16, 16, 3\)"):
        video.save(frames[0], tmp_path / "x.mp4", 8)
    for crf in (99, -1, True):
        with pytest.raises(ValueError, match="crf must be an int in 0..51"):
            video.save(frames, tmp_path / "x.mp4", 8, crf=crf)
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(video.VideoError, match="a folder of that name exists"):  # clean-up once masked this
        video.save(frames, tmp_path / "dir.mp4", 8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir.mp4"], "nothing partial left behind"
    video.save(frames, tmp_path / "ok.mp4", 8)
    assert video.load(tmp_path / "ok.mp4").frames.shape == (4, 16, 16, 3)


def test_api_edges(small_model, tmp_path):
    m = small_model
    x = pixels(m.cfg, batch=1)
    with pytest.raises(ValueError, match="stop_at_layer must be an int in .* got True"):
        m(x, stop_at_layer=True)
    with torch.no_grad():
        assert torch.equal(m(x, stop_at_layer=np.int64(2)), m(x, stop_at_layer=2))
        assert torch.equal(m(m(x, stop_at_layer=np.int32(1)), start_at_layer=np.int32(1)), m(x))
    with pytest.raises(ValueError, match=r"return_type must be one of \('logits', 'resid'\), got 'cache'"):
        m(x, return_type="cache")
    with pytest.raises(TypeError, match="names_filter must be None .* a list of hook names, or a function"):
        m.run_with_cache(x, names_filter=3)
    with pytest.raises(TypeError, match="names_filter must be"):
        m.run_with_cache(x, names_filter=["blocks.0.hook_z", 3])
    with pytest.raises(TypeError, match=r"fwd_hooks must be a list of .* pairs \(a single pair\? wrap it in a list\)"):
        m.run_with_hooks(x, fwd_hooks=("blocks.0.hook_resid_pre", lambda t, hook: None))
    with pytest.raises(TypeError, match="fwd_hooks must be a list of"):
        m.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pre", "not a function")])
    for name in ("", "  "):
        with pytest.raises(CheckpointNotFoundError, match="expected a checkpoint folder .* or a hub id"):
            HookedViViT.from_pretrained(name)
    assert all(not hp.has_hooks for hp in m.hook_dict.values()), "no hook left attached by a refused call"


def test_hub_id_without_network_is_one_message_without_retries(tmp_path, monkeypatch, caplog):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    with caplog.at_level(logging.WARNING), pytest.raises(CheckpointNotFoundError) as e:
        HookedViViT.from_pretrained("someone/no-such-vivit", cache_dir=tmp_path)
    assert "not in the Hugging Face cache and the hub cannot be reached" in str(e.value)
    assert not [r for r in caplog.records if "Retrying" in r.getMessage()], "no retry spam"


def test_hub_id_without_network_uses_the_cache(tmp_path, monkeypatch, small_folder):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-vivit"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(small_folder, repo / "snapshots" / sha)
    assert HookedViViT.from_pretrained("someone/tiny-vivit", cache_dir=tmp_path).cfg.n_layers == 3


def test_processor_config_fields_are_checked():
    with pytest.raises(ConfigError, match=r"size\.shortest_edge must be a positive int, got 0"):
        ProcessorConfig.from_hf_dict({"size": {"shortest_edge": 0}})
    with pytest.raises(ConfigError, match="do_rescale must be true or false"):
        ProcessorConfig.from_hf_dict({"do_rescale": "no"})
    with pytest.raises(ConfigError, match="crop_size must have height and width"):
        ProcessorConfig.from_hf_dict({"crop_size": {"h": 3}})
    from transformers import VivitImageProcessor

    assert ProcessorConfig.from_hf_dict(VivitImageProcessor().to_dict()) == ProcessorConfig(), "valid input still reads"


def test_a_nan_metric_is_reported_not_propagated(small_model):
    """A patching metric that returns NaN for a patched run is an error naming the runs, not a NaN map."""
    from tests.conftest import pixels
    from vivit_lens.patching import get_act_patch_attn_head_out_all_pos

    clean, corrupt = pixels(small_model.cfg, batch=1, seed=1), pixels(small_model.cfg, batch=1, seed=2)
    _, cache = small_model.run_with_cache(clean)

    def metric(logits):
        return logits[:, 0].mean() * float("nan")

    with pytest.raises(ValueError, match="NaN or inf"):
        get_act_patch_attn_head_out_all_pos(small_model, corrupt, cache, metric, progress=False)


def test_sigterm_leaves_nothing_half_written(tmp_path):
    """`kill` / `timeout` send SIGTERM, not Ctrl-C: the command still unwinds, removes its temporary folder and
    exits 143 with one line, in a real subprocess killed while it renders its training clips."""
    import signal
    import subprocess
    import time

    out = tmp_path / "model"
    proc = subprocess.Popen([sys.executable, "-m", "vivit_lens.train", "--out", str(out), "--n-train", "100000",
                             "--no-progress", "--quiet"], stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".model.partial-*")) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert list(tmp_path.glob(".model.partial-*")), "the run never started"
        time.sleep(1.0)  # inside the rendering
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 143 and err.strip().splitlines()[-1] == "vivit-lens: terminated; nothing was written"
    assert list(tmp_path.iterdir()) == []
