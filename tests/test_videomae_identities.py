"""The analysis code is exact through the readout on VideoMAE (mean pooling and first token) and on ViViT.

Every reference here is written by hand from a cache (the readout recomputed from the residual, the norm's
scale from its definition) or is an identity (patching everything gives the source run, nothing the target
run); the code under test is never its own reference. Models and inputs are float64, so the identities hold
to ~1e-10; the tolerances leave float64 rounding room only."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_hf, max_diff, pixels
from tests.videomae_fixtures import make_hf_videomae
from vivit_lens import HookedVideoMAE, HookedViViT
from vivit_lens import patching as P
from vivit_lens.ablation import Ablation, ablate
from vivit_lens.attribution import attribution_patch
from vivit_lens.measure import cls_attention
from vivit_lens.metrics import Logit, LogitDiff, SignalRecovery, final_resid_hook
from vivit_lens.paths import FinalResid, PathPatcher, all_senders
from vivit_lens.probes import collect_activations

LABEL, OTHER = 3, 5
TOL = 1e-9

# What the test knows of each architecture, written out here (not read from the code under test):
# (readout positions, first tubelet position, readout norm module name, its eps).
ARCH = {
    "vivit": lambda m: ([0], 1, "ln_final", m.cfg.layer_norm_eps),
    "mean_pooling": lambda m: (list(range(m.cfg.n_tubelets)), 0, "fc_norm", 1e-5),
    "first_token": lambda m: ([0], 0, "ln_final", m.cfg.layer_norm_eps),
}


@pytest.fixture(scope="module", params=list(ARCH))
def arch(request):
    if request.param == "vivit":
        model = HookedViViT.from_hf_model(make_hf(seed=4))
    else:
        model = HookedVideoMAE.from_hf_model(make_hf_videomae(seed=9, use_mean_pooling=request.param == "mean_pooling"))
    model = model.to(torch.float64)
    return request.param, model, *ARCH[request.param](model)


@pytest.fixture(scope="module")
def runs(arch):
    _, model, *_ = arch
    clean = pixels(model.cfg, batch=2, seed=21).double()
    corrupt = clean.clone()
    corrupt[:, 4:, :, 8:24, 8:24] = pixels(model.cfg, batch=2, seed=22).double()[:, 4:, :, 8:24, 8:24]
    with torch.no_grad():
        logits_c, cache_c = model.run_with_cache(clean)
        logits_r, cache_r = model.run_with_cache(corrupt)
    return clean, corrupt, logits_c, logits_r, cache_c, cache_r


def _hand_readout(model, cache, positions, norm_name, eps):
    """(scale [batch], norm weight, norm bias, pooled final residual) of the readout, by hand."""
    norm = getattr(model, norm_name)
    pooled = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"][:, positions].mean(1)
    centred = pooled - pooled.mean(-1, keepdim=True)
    scale = (centred.pow(2).mean(-1) + eps).sqrt()
    return scale, norm.w, norm.b, pooled


def _hand_attr(write, scale, direction):
    """DLA of a write at the readout positions `[batch k d_model]` (mean over them) through the frozen norm."""
    pooled = write.mean(1)
    return ((pooled - pooled.mean(-1, keepdim=True)) / scale[:, None]) @ direction


def test_the_hand_readout_is_the_model_readout(arch, runs):
    _, model, positions, _, norm_name, eps = arch
    _, _, logits_c, _, cache_c, _ = runs
    scale, w, b, pooled = _hand_readout(model, cache_c, positions, norm_name, eps)
    centred = pooled - pooled.mean(-1, keepdim=True)
    logits = (centred / scale[:, None] * w + b) @ model.W_U + model.b_U
    assert max_diff(logits, logits_c) < TOL
    assert list(model.readout_positions) == positions and model.readout_norm_name == norm_name


@pytest.mark.parametrize("other", [None, OTHER])
def test_dla_components_sum_to_the_logit_and_equal_the_hand_attribution(arch, runs, other):
    _, model, positions, _, norm_name, eps = arch
    _, _, logits_c, _, cache_c, _ = runs
    attrs, labels = cache_c.dla_components(LABEL, other)
    want = logits_c[:, LABEL] - (logits_c[:, other] if other is not None else 0)
    assert max_diff(attrs.sum(0), want) < TOL, max_diff(attrs.sum(0), want)
    scale, w, b, _ = _hand_readout(model, cache_c, positions, norm_name, eps)
    d = model.W_U[:, LABEL] - (model.W_U[:, other] if other is not None else 0)
    hooks = ["hook_embed", "hook_pos_embed"] + [f"blocks.{l}.hook_{k}_out" for l in range(model.cfg.n_layers)
                                                for k in ("attn", "mlp")]  # fmt: skip
    hand = torch.stack([_hand_attr(cache_c[h][:, positions], scale, d * w) for h in hooks])
    assert max_diff(attrs[:-1], hand) < TOL, max_diff(attrs[:-1], hand)
    bias = b @ d + model.b_U[LABEL] - (model.b_U[other] if other is not None else 0)
    assert max_diff(attrs[-1], bias.expand(2)) < TOL


def test_dla_heads_and_tokens_equal_the_hand_attribution(arch, runs):
    _, model, positions, _, norm_name, eps = arch
    _, _, _, _, cache_c, _ = runs
    scale, w, _, _ = _hand_readout(model, cache_c, positions, norm_name, eps)
    d = model.W_U[:, LABEL] * w
    heads, tokens = cache_c.dla_heads(LABEL), cache_c.dla_tokens(LABEL)
    comps, labels = cache_c.dla_components(LABEL)
    cfg = model.cfg
    for l in range(cfg.n_layers):
        z, v = cache_c[f"blocks.{l}.attn.hook_z"], cache_c[f"blocks.{l}.attn.hook_v"]
        pattern = cache_c[f"blocks.{l}.attn.hook_pattern"]  # [batch head q k]
        for h in range(cfg.n_heads):
            w_o = model.W_O[l, h]
            hand = _hand_attr(z[:, positions, h] @ w_o, scale, d)
            assert max_diff(heads[l, h], hand) < TOL
            row = pattern[:, h, positions].mean(1)  # [batch pos]: the readout's attention, by hand
            per_src = row * (((v[:, :, h] @ w_o) - (v[:, :, h] @ w_o).mean(-1, keepdim=True)) @ d) / scale[:, None]
            assert max_diff(tokens[l, h], per_src) < TOL
        # heads + b_O = the attention output's attribution
        b_o = _hand_attr(model.b_O[l].expand(2, 1, -1), scale, d)
        assert max_diff(heads[l].sum(0) + b_o, comps[labels.index(f"{l}_attn_out")]) < TOL


def test_readout_attention_row_is_the_mean_of_the_readout_queries_rows(arch, runs):
    _, model, positions, first, *_ = arch
    clean, _, _, _, cache_c, _ = runs
    for l in range(model.cfg.n_layers):
        hand = cache_c[f"blocks.{l}.attn.hook_pattern"][:, :, positions].mean(2)
        assert max_diff(cache_c.readout_attention_row(l), hand) < TOL
        assert max_diff(cache_c.cls_attention_row(l), hand) < TOL
    attn = cls_attention(model, clean, batch_index=1)  # rebuilt from q and k only
    hand = torch.stack([cache_c[f"blocks.{l}.attn.hook_pattern"][1, :, positions].mean(1)
                        for l in range(model.cfg.n_layers)])  # [layer head pos]  # fmt: skip
    assert max_diff(attn.values.flatten(2), hand[..., first:]) < TOL
    assert max_diff(attn.meta["cls_self"], hand[..., 0] if first else torch.zeros_like(hand[..., 0])) < TOL


# Activation patching --------------------------------------------------------------------------------------
SWEEPS = [("resid_pre", None), ("resid_mid", None), ("attn_out", None), ("mlp_out", None), ("z", "each"),
          ("q", "each"), ("k", "each"), ("v", "each"), ("pattern", "each")]  # fmt: skip


@pytest.mark.parametrize("act,heads", SWEEPS)
def test_patch_sweeps_recover_everything_and_nothing(arch, runs, act, heads):
    _, model, *_ = arch
    clean, corrupt, logits_c, logits_r, cache_c, cache_r = runs
    recovery = SignalRecovery.from_caches(cache_c, cache_r, final_resid_hook(model))  # at the readout positions
    assert list(recovery.positions) == list(model.readout_positions)
    same = P.patch_sweep(model, corrupt, corrupt, recovery, act=act, heads=heads, progress=False)
    assert same.values.abs().max() < 1e-7, f"nothing patched must recover 0%: {same.values.abs().max():.2e}"
    if act in ("resid_pre", "resid_mid"):  # every position of the residual: the clean run, 100% and its logits
        full = P.patch_sweep(model, clean, corrupt, recovery, act=act, progress=False)
        assert max_diff(full.values, torch.full_like(full.values, 100.0)) < 1e-7
        diff = P.patch_sweep(model, clean, corrupt, LogitDiff(LABEL, OTHER), act=act, progress=False)
        want = (logits_c[:, LABEL] - logits_c[:, OTHER]).mean()
        assert max_diff(diff.values, want.expand_as(diff.values)) < TOL


TL_SWEEPS = ["get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out",
             "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_q_all_pos",
             "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_v_all_pos",
             "get_act_patch_attn_head_pattern_all_pos"]  # fmt: skip


@pytest.mark.parametrize("name", TL_SWEEPS)
def test_transformer_lens_sweeps_recover_everything_and_nothing(arch, runs, name):
    _, model, *_ = arch
    clean, corrupt, _, _, cache_c, cache_r = runs
    fn = getattr(P, name)
    recovery = SignalRecovery.from_caches(cache_c, cache_r, final_resid_hook(model))
    nothing = fn(model, corrupt, cache_r, recovery, progress=False)
    assert nothing.abs().max() < 1e-7
    if name in ("get_act_patch_resid_pre", "get_act_patch_resid_mid"):
        everything = fn(model, corrupt, cache_c, recovery, positions="all", progress=False)
        assert max_diff(everything, torch.full_like(everything, 100.0)) < 1e-7


def test_cls_positions_are_refused_without_a_cls_token(arch, runs):
    kind, model, positions, *_ = arch
    clean, corrupt, *_ = runs
    metric = Logit(LABEL)
    if kind == "vivit":
        cls = P.patch_sweep(model, clean, corrupt, metric, act="resid_pre", positions="cls", progress=False)
        readout = P.patch_sweep(model, clean, corrupt, metric, act="resid_pre", positions="readout", progress=False)
        assert max_diff(cls.values, readout.values) == 0
        return
    with pytest.raises(ValueError, match="no \\[CLS\\].*readout"):
        P.patch_sweep(model, clean, corrupt, metric, act="resid_pre", positions="cls", progress=False)
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        P.frame_groups(model, include_cls=True)
    with pytest.raises(ValueError, match="no \\[CLS\\].*readout"):
        collect_activations(model, clean, pool="cls", progress=False)
    readout = P.patch_sweep(model, clean, corrupt, metric, act="resid_pre", positions="readout", progress=False)
    hand = P.patch_sweep(model, clean, corrupt, metric, act="resid_pre", positions=positions, progress=False)
    assert max_diff(readout.values, hand.values) == 0


# Path patching and attribution patching ---------------------------------------------------------------------
def _frozen_scale_hook(model, cache):
    """A hook that holds the readout norm's scale at the reference run's value, for stacked runs too."""
    name = f"{model.readout_norm_name}.hook_scale"
    scale = cache[name]
    return name, lambda t, hook: scale.repeat(t.shape[0] // scale.shape[0], *[1] * (scale.ndim - 1))


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_direct_paths_to_the_readout_are_the_dla_differences_under_the_frozen_scale(arch, runs, direction):
    """With the readout norm's scale frozen the logit is linear in the final residual: the path of each sender
    into FinalResid() is exactly the difference of its hand DLA between source and reference; attribution
    patching (a first-order method) is exact there too."""
    _, model, positions, _, norm_name, eps = arch
    clean, corrupt, _, _, cache_c, cache_r = runs
    src, ref = (cache_c, cache_r) if direction == "denoising" else (cache_r, cache_c)
    hook = _frozen_scale_hook(model, ref)
    with model.hooks([hook]):
        exact = PathPatcher(model, clean, corrupt, Logit(LABEL), direction=direction).senders_into(FinalResid())
        approx = attribution_patch(model, clean, corrupt, Logit(LABEL), direction=direction).senders_into(FinalResid())
    scale, w, _, _ = _hand_readout(model, ref, positions, norm_name, eps)
    d = model.W_U[:, LABEL] * w
    L, H = model.cfg.n_layers, model.cfg.n_heads
    heads = torch.zeros(L, H, dtype=torch.float64)
    for l in range(L):
        z = f"blocks.{l}.attn.hook_z"
        for h in range(H):
            w_o = model.W_O[l, h]
            heads[l, h] = (_hand_attr(src[z][:, positions, h] @ w_o, scale, d)
                           - _hand_attr(ref[z][:, positions, h] @ w_o, scale, d)).mean()  # fmt: skip
    mlps = torch.stack([(_hand_attr(src[n][:, positions], scale, d) - _hand_attr(ref[n][:, positions], scale, d)).mean()
                        for n in (f"blocks.{l}.hook_mlp_out" for l in range(L))])  # fmt: skip
    assert max_diff(exact.heads(), heads) < TOL, max_diff(exact.heads(), heads)
    assert max_diff(exact.mlps(), mlps) < TOL
    assert max_diff(approx.values, exact.values) < TOL, max_diff(approx.values, exact.values)
    assert heads.abs().max() > 1e-3


def test_signal_recovery_at_the_readout_is_additive_over_senders_and_totals_100(arch, runs):
    _, model, *_ = arch
    clean, corrupt, _, _, cache_c, cache_r = runs
    metric = SignalRecovery.from_caches(cache_c, cache_r, final_resid_hook(model))
    pp = PathPatcher(model, clean, corrupt, metric)
    sweep = pp.senders_into(FinalResid(), senders="all")
    total = pp.patch(all_senders(model.cfg), FinalResid()).item()
    assert abs(sweep.values.sum().item() - total) < 1e-7 and abs(total - 100) < 1e-7


def test_attribution_fast_path_equals_the_full_run(arch, runs):
    """The fast path computes the last block at the readout positions only; the attributions are unchanged."""
    _, model, *_ = arch
    clean, corrupt, *_ = runs
    fast = attribution_patch(model, clean, corrupt, LogitDiff(LABEL, OTHER))
    slow = attribution_patch(model, clean, corrupt, LogitDiff(LABEL, OTHER), fast=False)
    for get in (lambda a: a.senders_into(FinalResid()).values, lambda a: a.matrix().values):
        assert max_diff(get(fast), get(slow)) < TOL, max_diff(get(fast), get(slow))


# Ablation and probes -----------------------------------------------------------------------------------------
def test_token_mean_ablation_uses_the_tubelet_tokens(arch, runs):
    _, model, _, first, *_ = arch
    clean, _, _, _, cache_c, _ = runs
    hook, region = "blocks.1.hook_resid_pre", [first, first + 3, first + 9]

    def by_hand(act, hook):
        act = act.clone()
        act[:, region] = act[:, first:].mean(1, keepdim=True)
        return act

    with torch.no_grad():
        want = model.run_with_hooks(clean, fwd_hooks=[(hook, by_hand)])
    assert max_diff(ablate(model, clean, Ablation.mean(hook, positions=region)), want) < TOL
    value = Ablation.mean(hook, cache_c, over="tokens").value
    assert max_diff(value, cache_c[hook][:, first:].mean((0, 1)).expand_as(value)) < TOL


def test_collect_activations_pools_like_the_hand_written_readout(arch, runs):
    kind, model, positions, first, *_ = arch
    clean, _, _, _, cache_c, _ = runs
    acts = torch.stack([cache_c[f"blocks.{l}.hook_resid_post"] for l in range(model.cfg.n_layers)])
    got = collect_activations(model, clean, pool="readout", batch_size=1, progress=False)
    assert got.shape == (model.cfg.n_layers, 2, model.cfg.d_model)
    assert max_diff(got, acts[:, :, positions].mean(2)) < TOL
    mean = collect_activations(model, clean, pool="mean", progress=False)
    assert max_diff(mean, acts[:, :, first:].mean(2)) < TOL
    if kind == "vivit":
        assert max_diff(collect_activations(model, clean, pool="cls", progress=False), acts[:, :, 0]) < TOL
