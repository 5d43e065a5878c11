"""Devices: every public analysis entry point with the model on `meta` (a device other than the CPU that CI has).

A tensor built on the CPU and combined with one on the model's device fails on `meta` exactly as on CUDA
("Expected all tensors to be on the same device"), so these runs catch device mixing without a GPU; meta
tensors hold no values, so they check devices and shapes, and the numbers are checked on the CPU elsewhere.

What cannot run on `meta`, and why (each is covered here through the entry points it calls):
- `analyze_pair` and `study` choose the class from the clean clip's top prediction and write JSON numbers
  (`int(argmax)`, `float(t)`): both read values, which meta tensors do not hold. Their steps are the
  entry points below (caches, delta norms, DLA, [CLS] attention, ablation, patching sweeps, path patching,
  attribution, activation collection).
- The probes' fitting (`fit_probe`, `grouped_cv_probes`, `transfer_probes`) runs an L-BFGS loop that tests for
  convergence and bootstraps CIs with numpy: it reads values. It works on the activations `collect_activations`
  returns (in float64 on the CPU), so only the collection touches the model's device.
- `top_heads_by_cls_attention` returns a ranked list of Python numbers (it sorts by value).
- `agreement` returns Python floats (correlations): it moves both score tensors to the CPU first.
"""

from __future__ import annotations

import inspect

import pytest
import torch

from tests.conftest import make_hf, pixels
from vivit_lens import HookedViViT
from vivit_lens.metrics import Logit, LogitDiff, SignalRecovery, final_resid_hook

LABEL, OTHER = 3, 5


def tl_logit_diff(logits):
    return (logits[:, LABEL] - logits[:, OTHER]).mean()


@pytest.fixture(scope="module")
def meta():
    """The small random model on meta, a clean/corrupt pair there and both runs' full caches."""
    model = HookedViViT.from_hf_model(make_hf()).to("meta")
    clean = pixels(model.cfg, batch=1, seed=1)
    corrupt = clean.clone()
    corrupt[:, 4:, :, :16, :16] = 0.5
    clean, corrupt = clean.to("meta"), corrupt.to("meta")
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, rc = model.run_with_cache(corrupt)
    return model, clean, corrupt, cc, rc


def on_meta(t) -> bool:
    return isinstance(t, torch.Tensor) and t.device.type == "meta"


def test_from_pretrained_places_the_model(small_folder):
    model = HookedViViT.from_pretrained(small_folder, device="meta", dtype="bfloat16")
    assert model.cfg.device.type == "meta" and model.cfg.dtype == torch.bfloat16
    assert all(p.device.type == "meta" and p.dtype == torch.bfloat16 for p in model.parameters())
    back = HookedViViT.from_pretrained(small_folder, dtype=torch.float64).to(torch.float32)
    assert back.cfg.dtype == torch.float32 and back.W_Q.dtype == torch.float32


def test_cpu_pixels_run_on_a_model_elsewhere(meta):
    model, clean, *_ = meta
    assert on_meta(model(torch.zeros(clean.shape)))  # the forward moves pixels to the model, as TL moves tokens


def test_cache_analysis_on_meta(meta):
    from vivit_lens.measure import cls_attention, delta_norms

    model, clean, corrupt, cc, rc = meta
    assert on_meta(delta_norms(cc, rc).values)
    attn = cls_attention(cc)
    assert on_meta(attn.values)
    assert on_meta(cls_attention(model, clean, layers=[1]).values)
    for fn in (lambda: cc.dla_components(LABEL)[0], lambda: cc.dla_heads(LABEL, OTHER), lambda: cc.dla_tokens(LABEL),
               lambda: cc.accumulated_resid(apply_ln=True), lambda: cc.stack_head_results(layer=-1),
               lambda: cc.stack_neuron_results(layer=1), lambda: cc.ln_scale(1),
               lambda: cc.logit_attrs(cc.decompose_resid(pos_slice=0), torch.tensor([LABEL, OTHER]), pos_slice=0),
               lambda: cc.get_full_resid_decomposition(pos_slice=0, apply_ln=True, project_output_onto=model.W_U),
               lambda: cc.logit_bias(LABEL, OTHER), lambda: cc.per_frame(cc.cls_attention_row(1)),
               lambda: cc.per_location(cc.cls_attention_row(1)), lambda: cc.to_grid(cc.cls_attention_row(1))):  # fmt: skip
        assert on_meta(fn())


def test_every_patching_sweep_on_meta(meta):
    from vivit_lens import generic_patching as gp
    from vivit_lens import patching as P

    model, clean, corrupt, cc, rc = meta
    rec = SignalRecovery.from_caches(cc, rc, final_resid_hook(model))
    small = dict(layers=[1], batch_size=256, progress=False)  # meta kernels run in Python: few, large batches
    for metric in (Logit(LABEL), LogitDiff(LABEL, OTHER), tl_logit_diff):
        assert on_meta(P.patch_sweep(model, clean, corrupt, metric, "z", heads="each", **small).values)
    for act in ("resid_pre", "resid_mid", "attn_out", "mlp_out", "z", "q", "k", "v", "pattern", "post", "embed"):
        heads = "each" if act in ("z", "q", "k", "v", "pattern") else None
        res = P.patch_sweep(model, clean, corrupt, rec, act, heads=heads, positions="frames", **small)
        assert on_meta(res.values), act
    assert on_meta(P.run_patches(model, corrupt, cc, [P.Patch("blocks.1.hook_mlp_out", 0)], rec, progress=False))
    names = [n for n in dir(P) if n.startswith("get_act_patch_")]
    assert len(names) >= 15
    for name in names:
        fn = getattr(P, name)
        params = inspect.signature(fn).parameters
        if fn.__module__ != P.__name__:  # generic_patching's (every dest x src pattern entry, direct paths): below
            continue
        kwargs = {**small, "positions": "frames"}
        if "kwargs" not in params:
            kwargs = {k: v for k, v in kwargs.items() if k in params}
        if name.endswith("all_pos_every"):
            kwargs.pop("positions")
        assert on_meta(fn(model, corrupt, cc, tl_logit_diff, **kwargs)), name
    for setter, act in ((gp.layer_pos_patch_setter, "resid_pre"), (gp.layer_head_vector_patch_setter, "z"),
                        (gp.layer_pos_head_vector_patch_setter, "z"), (gp.layer_head_pattern_patch_setter, "pattern"),
                        (gp.layer_head_pos_pattern_patch_setter, "pattern"),
                        (gp.layer_head_dest_src_pos_pattern_patch_setter, "pattern")):  # fmt: skip
        index = [(1,) + (0,) * (_index_len(setter) - 1)]
        assert on_meta(gp.generic_activation_patch(model, corrupt, cc, tl_logit_diff, setter, act, index_df=index,
                                                   progress=False)), setter.__name__  # fmt: skip
    assert on_meta(gp.get_act_patch_direct_path(model, corrupt, cc, rc, tl_logit_diff, 0, 1, "k", verbose=False))
    assert on_meta(gp.get_act_patch_direct_path_all_sources(model, corrupt, cc, rc, tl_logit_diff, "v", verbose=False))


def _index_len(setter) -> int:
    return {"layer_pos_patch_setter": 2, "layer_head_vector_patch_setter": 2, "layer_pos_head_vector_patch_setter": 3,
            "layer_head_pattern_patch_setter": 2, "layer_head_pos_pattern_patch_setter": 3,
            "layer_head_dest_src_pos_pattern_patch_setter": 4}[setter.__name__]  # fmt: skip


def test_path_patching_and_attribution_on_meta(meta):
    from vivit_lens.attribution import attribution_patch
    from vivit_lens.paths import (
        MLP,
        FinalResid,
        Head,
        HeadInput,
        MLPInput,
        PathPatcher,
        path_patch,
        path_patch_receivers,
        path_patch_senders,
    )

    model, clean, corrupt, cc, rc = meta
    for metric, direction in ((Logit(LABEL), "denoising"), (tl_logit_diff, "noising")):
        if True:
            pp = PathPatcher(model, clean, corrupt, metric, direction=direction, batch_size=7)
            assert on_meta(pp.patch(Head(0, 1), FinalResid()))
            assert on_meta(pp.senders_into(FinalResid()).heads())
            assert on_meta(pp.senders_into(MLPInput(2), senders="heads").values)
            assert on_meta(pp.receivers_of(Head(0, 2)).receiver_maps()["q"])
            assert on_meta(pp.matrix(senders=[Head(0, 0), MLP(0)], receivers=[HeadInput(1, 0, "k"), FinalResid()]).values)
            a = attribution_patch(model, clean, corrupt, metric, direction=direction)
            for prop in ("head_out", "head_out_by_pos", "q", "k", "v", "q_by_pos", "k_by_pos", "v_by_pos",
                         "resid_pre", "attn_out", "mlp_out"):  # fmt: skip
                assert on_meta(getattr(a, prop)), prop
            # edge attribution: the reach mask and the receivers' gradients must live with the scores
            assert on_meta(a.matrix().values) and on_meta(a.senders_into(FinalResid()).heads())
            assert on_meta(a.receivers_of(Head(0, 1)).values) and on_meta(a.patch("heads", FinalResid()))
    assert on_meta(path_patch(model, clean, corrupt, Head(1, 1), FinalResid(), Logit(LABEL)))
    assert on_meta(path_patch_senders(model, clean, corrupt, FinalResid(), Logit(LABEL)).values)
    assert on_meta(path_patch_receivers(model, clean, corrupt, Head(0, 0), Logit(LABEL)).values)
    hooks = ["blocks.1.attn.hook_pattern", "ln_final.hook_normalized"]
    assert all(on_meta(attribution_patch(model, clean, corrupt, Logit(LABEL), hooks=hooks).node(h)) for h in hooks)


def test_ablation_on_meta(meta):
    from vivit_lens.ablation import Ablation, ablate, mask_pixels

    model, clean, corrupt, cc, rc = meta
    region = model.grid.positions(frames=range(4, 8), box=(0, 0, 16, 16))
    hook = "blocks.1.hook_resid_pre"
    for abl in (Ablation.zero(hook, positions=region), Ablation.mean(hook, rc, positions=region),
                Ablation.resample(hook, rc, positions=region), Ablation.noise(hook, 0.1, positions=region),
                Ablation.zero("blocks.0.attn.hook_z", heads=[1]), Ablation.mean("blocks.0.attn.hook_z", rc, heads=[1])):  # fmt: skip
        assert on_meta(ablate(model, corrupt, abl))
    for value in (0.0, "mean", torch.tensor([0.0, 0.5, 1.0])):
        assert on_meta(mask_pixels(clean, frames=range(4, 8), box=(0, 0, 16, 16), value=value))


def test_activation_collection_on_meta(meta):
    from vivit_lens.probes import collect_activations

    model, clean, corrupt, cc, rc = meta
    clips = torch.cat([clean, corrupt, clean])
    for source in (clips, [clips[:2], clips[2:]], (c[None] for c in clips)):
        acts, top = collect_activations(model, source, batch_size=2, progress=False, return_top1=True)
        assert on_meta(acts) and acts.shape == (model.cfg.n_layers, 3, model.cfg.d_model) and on_meta(top)
