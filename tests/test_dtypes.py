"""float32, bfloat16 and float16 end to end on the shipped model, each within its own precision of float64.

Reference: the same analysis with the model in float64. Tolerances follow from the dtype's machine epsilon
`eps` (torch.finfo), fixed before looking at the results: a forward pass through `n_layers` blocks whose
residual stream is rounded to relative precision `eps` at each block accumulates a relative error of at most
about `n_layers * eps` of the residual's size, so
- logits: `n_layers * eps * max|logit|`;
- recoveries (%): one unit of relative residual error moves a recovery by `100 * ||r_clean|| / ||r_clean -
  r_corrupt||` points (the signal is a difference of two residuals), so `n_layers * eps` times that.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from vivit_lens import HookedViViT, analysis
from vivit_lens.assets import tiny_model_path
from vivit_lens.metrics import final_resid_hook


def _run(dtype: torch.dtype, pair) -> dict:
    model = HookedViViT.from_pretrained(tiny_model_path(), dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the PrecisionWarning of low-precision recoveries is the point here
        res = analysis.analyze_pair(model, pair.clean, pair.corrupt, region=pair.region, label=0, progress=False)
        with torch.no_grad():
            logits, cc = model.run_with_cache(pair.clean)
            _, rc = model.run_with_cache(pair.corrupt)
    hook = final_resid_hook(model)
    return {"logits": logits.double(), "heads": torch.tensor(res["patching"]["heads"]),
            "attention": torch.tensor(res["patching"]["attention"]), "mlp": torch.tensor(res["patching"]["mlp"]),
            "r_clean": cc[hook][:, 0].double(), "r_corrupt": rc[hook][:, 0].double(),
            "n_layers": model.cfg.n_layers, "steps": set(res) & {"paths", "attribution", "ablation", "dla"}}  # fmt: skip


@pytest.fixture(scope="module")
def pair():
    model = HookedViViT.from_pretrained(tiny_model_path())
    return analysis.generate_pairs(model, "bowling", 1, seed=5)[0]


@pytest.fixture(scope="module")
def reference(pair):
    return _run(torch.float64, pair)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_each_dtype_is_within_its_precision_of_float64(dtype, pair, reference):
    got, ref = _run(dtype, pair), reference
    eps, n = torch.finfo(dtype).eps, ref["n_layers"]
    logit_tol = n * eps * ref["logits"].abs().max().item()
    err = (got["logits"] - ref["logits"]).abs().max().item()
    assert err <= logit_tol, f"{dtype} logits: max |diff| {err:.3g} > {logit_tol:.3g}"
    points = 100 * ref["r_clean"].norm().item() / (ref["r_clean"] - ref["r_corrupt"]).norm().item()
    tol = n * eps * points
    for key in ("heads", "attention", "mlp"):
        err = (got[key] - ref[key]).abs().max().item()
        assert err <= tol, f"{dtype} {key} recovery: max |diff| {err:.3g} points > {tol:.3g}"
    assert got["steps"] == {"paths", "attribution", "ablation", "dla"}  # every step ran in this dtype


def test_signal_recovery_of_half_precision_residuals_does_not_overflow():
    """A [CLS] difference whose squared norm passes float16's largest value (65504) still gives the recovery that
    float64 gives (it used to be inf / inf = NaN)."""
    from vivit_lens.interp.metrics import SignalRecovery

    g = torch.Generator().manual_seed(0)
    clean, corrupt = 40 * torch.randn(1, 1, 64, generator=g), 40 * torch.randn(1, 1, 64, generator=g)
    patched = corrupt + 0.3 * (clean - corrupt) + torch.randn(1, 1, 64, generator=g)
    assert float(((clean - corrupt) ** 2).sum()) > 65504
    half = SignalRecovery("blocks.0.hook_resid_post", (0,), clean.half(), corrupt.half())(patched.half())
    ref = SignalRecovery("blocks.0.hook_resid_post", (0,), clean.double(), corrupt.double())(patched.half().double())
    assert torch.isfinite(half).all() and float((half.double() - ref).abs().max()) < 0.5  # points of recovery
