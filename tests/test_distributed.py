"""Ray: a real local cluster of 2 workers (no mock) gives the serial run's results, in the same order.

References: the serial run in this process (same per-pair numbers and CIs, compared exactly as JSON), a
failing pair that both must report with its error while the rest completes, and activations collected
from video files, from a generator and from a tensor.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from vivit_lens import HookedViViT, analysis
from vivit_lens.assets import pair_paths, tiny_model_path
from vivit_lens.distributed import Failed, SerialRunner
from vivit_lens.probes import collect_activations

ray = pytest.importorskip("ray", reason="the distributed extra (ray) is not installed")


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_pretrained(tiny_model_path())


@pytest.fixture(scope="module")
def runner(model):
    from vivit_lens.distributed import RayRunner

    r = RayRunner(model, workers=2, threads=1)
    yield r
    r.close()
    assert not ray.is_initialized()  # the local cluster is stopped


@pytest.fixture(scope="module")
def pairs(model):
    good = analysis.generate_pairs(model, "bowling", 3, seed=40)
    same = analysis.PairInput("identical", good[0].clean, good[0].clean.clone(), good[0].region)  # nothing to recover
    return {"bowling": [good[0], same, *good[1:]], "golf_putt": analysis.generate_pairs(model, "golf_putt", 2, seed=40)}


def test_replicas_are_the_model(runner, model):
    assert runner.workers == 2 and len(runner.placement) == 2
    assert all(p == ("cpu", str(model.cfg.dtype), 1) for p in runner.placement)


def _numbers(x):
    """Every number of a JSON-like structure, in order."""
    if isinstance(x, dict):
        return [v for k in sorted(x) for v in _numbers(x[k])]
    if isinstance(x, list):
        return [v for item in x for v in _numbers(item)]
    return [x] if isinstance(x, float) else []


def test_study_on_two_workers_is_the_serial_study(model, runner, pairs):
    """Bit for bit the serial study at the workers' thread count (1). At another thread count torch's CPU kernels
    may round differently (seen on an AMD EPYC: 2 threads vs 1 differ by ~1e-6 relative), so there the per-pair
    figures agree to float32 rounding, not bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = analysis.jsonable(analysis.study(model, pairs, n_boot=200, k_folds=2, progress=False))
    finally:
        torch.set_num_threads(threads)
    ray_run = analysis.jsonable(analysis.study(model, pairs, n_boot=200, k_folds=2, progress=False, runner=runner))
    assert json.dumps(ray_run, sort_keys=True) == json.dumps(serial, sort_keys=True)
    other = analysis.jsonable(analysis.study(model, pairs, n_boot=200, k_folds=2, progress=False))  # 2 threads
    a, b = (np.array(_numbers([d["per_pair"] for d in r["domains"].values()]), float) for r in (ray_run, other))
    assert a.shape == b.shape and np.allclose(a, b, rtol=1e-4, atol=1e-4, equal_nan=True)
    d = ray_run["domains"]["bowling"]
    assert d["pairs"] == [pairs["bowling"][i].name for i in (0, 2, 3)]  # the pairs' order, the failed one left out
    assert [f["pair"] for f in d["failed"]] == ["identical"] and "no signal to recover" in d["failed"][0]["error"]
    assert any("identical failed" in w for w in ray_run["warnings"])
    assert ray_run["domains"]["golf_putt"]["n"] == 2 and ray_run["domains"]["golf_putt"]["failed"] == []


def test_failures_come_back_in_place(model, runner):
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/
    items = [1, "boom", 2, 3]
    for r in (runner, SerialRunner(model)):
        got = r.map(_square_or_fail, items, progress=False)
        assert got[0] == 1 and got[2] == 4 and got[3] == 9
        assert isinstance(got[1], Failed) and got[1].error == "ValueError: cannot square 'boom'"


def _square_or_fail(model, x):
    if not isinstance(x, int):
        raise ValueError(f"cannot square {x!r}")
    return x * x


def test_activations_from_files_and_generators(model, runner):
    paths = [p for a in ("bowling", "golf_putt") for p in pair_paths(a)[:2]] * 2  # 8 clips from 4 files
    want, top = collect_activations(model, paths, batch_size=3, progress=False, return_top1=True)
    assert want.shape == (model.cfg.n_layers, 8, model.cfg.d_model)
    from vivit_lens import video

    pixels = video.preprocess([video.load(p, num_frames=model.cfg.num_frames) for p in paths], model.processor)
    torch.testing.assert_close(collect_activations(model, pixels, batch_size=8, progress=False), want, rtol=0, atol=1e-5)
    for source in (paths, (p for p in paths), (pixels[i : i + 2] for i in range(0, 8, 2))):
        got, got_top = collect_activations(model, source, batch_size=3, progress=False, return_top1=True, runner=runner)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        assert torch.equal(got_top, top)


def test_workers_without_ray_say_how_to_install_it(monkeypatch, capsys, tmp_path):
    from vivit_lens import cli

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError, as when it is absent
    code = cli.main(["study", "--pairs", "2", "--workers", "2", "--out", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "pip install 'vivit_lens[distributed]'" in err[0], err
    assert not (tmp_path / "o").exists()
