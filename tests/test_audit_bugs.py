"""One test per bug an independent audit found (each written first, seen failing, then fixed), plus the
audit's smaller findings. References: hand-written hooks and autograd, float64 runs, identities."""

from __future__ import annotations

import warnings

import pytest
import torch

from tests.conftest import make_hf, max_diff, pixels
from vivit_lens import HookedViViT
from vivit_lens.attribution import agreement, attribution_patch
from vivit_lens.metrics import Logit, LogitDiff, SignalRecovery, final_resid_hook

try:
    from vivit_lens.metrics import PrecisionWarning
except ImportError:  # before the fix
    PrecisionWarning = UserWarning
from vivit_lens.paths import FinalResid, MLPInput, PathPatcher
from vivit_lens.patching import get_act_patch_attn_head_out_all_pos, get_act_patch_resid_pre, patch_sweep

LABEL, OTHER = 3, 5


def _pair(cfg, batch=2, seed=1, dtype=torch.float32):
    clean = pixels(cfg, batch=batch, seed=seed)
    corrupt = clean.clone()
    corrupt[:, cfg.num_frames // 2:, :, :16, :16] = pixels(cfg, batch=batch, seed=seed + 100)[:, cfg.num_frames // 2:, :, :16, :16]
    return clean.to(dtype), corrupt.to(dtype)


def tl_logit_diff(logits):
    """A TransformerLens-style metric: the whole batch's logits in, a scalar out."""
    return (logits[:, LABEL] - logits[:, OTHER]).mean()


# 1. SignalRecovery checks clean == corrupt per example ----------------------------------------------
def test_signal_recovery_refuses_an_example_with_nothing_to_recover(small_model):
    clean, corrupt = _pair(small_model.cfg)
    corrupt[1] = clean[1]  # example 1: the pair is identical, its recovery would be 0/0
    with torch.no_grad():
        _, cc = small_model.run_with_cache(clean)
        _, rc = small_model.run_with_cache(corrupt)
    with pytest.raises(ValueError, match=r"example\(s\) \[1\]"):
        SignalRecovery.from_caches(cc, rc, final_resid_hook(small_model))
    ok = SignalRecovery.from_caches(cc.apply_slice_to_batch_dim(slice(0, 1)), rc.apply_slice_to_batch_dim(slice(0, 1)),
                                    final_resid_hook(small_model))  # fmt: skip
    assert ok(cc[final_resid_hook(small_model)][:1]).item() == pytest.approx(100)


# 2. attribution_patch(hooks=[pattern]) --------------------------------------------------------------
@pytest.mark.parametrize("heads", [4, 1])
def test_attribution_of_an_extra_pattern_hook_keeps_its_shape_and_value(heads):
    model = HookedViViT.from_hf_model(make_hf(num_attention_heads=heads, hidden_size=12 * heads))
    clean, corrupt = _pair(model.cfg, batch=1)
    hook = "blocks.1.attn.hook_pattern"
    a = attribution_patch(model, clean, corrupt, Logit(LABEL), hooks=[hook])
    got = a.node(hook)
    assert got.shape == (heads, model.cfg.n_pos)  # [head query_pos]: summed over key positions
    # reference: autograd through a plain hook on the corrupt run
    with torch.no_grad():
        _, src = model.run_with_cache(clean, names_filter=hook)
    kept = {}

    def keep(t, hook):
        t.retain_grad()
        kept["t"] = t

    with torch.enable_grad(), model.hooks([(hook, keep)]):
        Logit(LABEL)(model(corrupt)).sum().backward()
    want = ((src[hook] - kept["t"].detach()) * kept["t"].grad).sum(-1).mean(0)
    assert max_diff(got, want) < 1e-6, max_diff(got, want)


# 3. Every analysis entry point on a non-CPU device (meta: shapes and devices, no values) -------------
def test_every_entry_point_runs_on_the_meta_device():
    from vivit_lens.generic_patching import generic_activation_patch, layer_pos_patch_setter
    from vivit_lens.patching import Patch, run_patches

    model = HookedViViT.from_hf_model(make_hf()).to("meta")
    clean, corrupt = (x.to("meta") for x in _pair(model.cfg))
    L, H = model.cfg.n_layers, model.cfg.n_heads
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
        _, rc = model.run_with_cache(corrupt)
    rec = SignalRecovery.from_caches(cc, rc, final_resid_hook(model))
    for metric in (Logit(LABEL), rec, tl_logit_diff):
        res = patch_sweep(model, clean, corrupt, metric, "z", heads="each", progress=False)
        assert res.values.device.type == "meta" and res.shape == (L, H)
        assert get_act_patch_resid_pre(model, corrupt, cc, metric, progress=False).shape == (L, model.cfg.n_pos)
    assert run_patches(model, corrupt, cc, [Patch("blocks.1.hook_mlp_out", 0)], rec, progress=False).shape == (1,)
    out = generic_activation_patch(model, corrupt, cc, tl_logit_diff, layer_pos_patch_setter, "resid_pre",
                                   index_df=[(0, 1), (2, 3)], progress=False)  # fmt: skip
    assert out.device.type == "meta"
    for metric in (Logit(LABEL), rec, tl_logit_diff):
        pp = PathPatcher(model, clean, corrupt, metric, batch_size=7)
        assert pp.senders_into(FinalResid()).heads().device.type == "meta"
        assert pp.senders_into(MLPInput(1), senders="heads").values.shape == (L * H, 1)
        maps = pp.receivers_of(pp._sender_list("heads")[0]).receiver_maps()
        assert maps["q"].device.type == "meta"
    for metric in (Logit(LABEL), tl_logit_diff):
        a = attribution_patch(model, clean, corrupt, metric)
        assert a.matrix().values.device.type == "meta" and a.head_out.shape == (L, H)
        assert a.senders_into(FinalResid()).heads().device.type == "meta"
    for fn in (lambda: cc.dla_components(LABEL)[0], lambda: cc.dla_heads(LABEL, OTHER), lambda: cc.dla_tokens(LABEL),
               lambda: cc.logit_attrs(cc.decompose_resid(pos_slice=0), torch.tensor([LABEL, OTHER]), pos_slice=0),
               lambda: cc.get_full_resid_decomposition(pos_slice=0, apply_ln=True, project_output_onto=model.W_U),
               lambda: cc.logit_bias(LABEL, OTHER), lambda: cc.per_frame(cc.cls_attention_row(1))):  # fmt: skip
        assert fn().device.type == "meta"


# 4. A float64 model's sweeps stay float64 -----------------------------------------------------------
def test_float64_model_results_keep_float64():
    model = HookedViViT.from_hf_model(make_hf()).double()
    clean, corrupt = _pair(model.cfg, batch=1, dtype=torch.float64)
    with torch.no_grad():
        _, cc = model.run_with_cache(clean)
    got = get_act_patch_attn_head_out_all_pos(model, corrupt, cc, Logit(LABEL), progress=False)
    assert got.dtype == torch.float64
    want = torch.zeros(model.cfg.n_layers, model.cfg.n_heads, dtype=torch.float64)
    for layer in range(model.cfg.n_layers):  # plain loop: one full float64 forward per head
        for head in range(model.cfg.n_heads):
            def patch(z, hook, head=head, layer=layer):
                z = z.clone()
                z[:, :, head] = cc["z", layer][:, :, head]
                return z

            with torch.no_grad():
                want[layer, head] = model.run_with_hooks(corrupt, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", patch)])[0, LABEL]
    assert max_diff(got, want) < 1e-12, max_diff(got, want)
    sweep = patch_sweep(model, clean, corrupt, Logit(LABEL), "mlp_out", progress=False)
    assert sweep.values.dtype == torch.float64


# 5. A stack without a batch axis on a batch-2 cache ---------------------------------------------------
def test_unbatched_stack_on_a_batched_cache_takes_an_index_or_refuses(small_model):
    with torch.no_grad():
        _, cache = small_model.run_with_cache(pixels(small_model.cfg, 2, seed=9))
    stack = cache.decompose_resid(pos_slice=0)  # [component batch d_model]
    with pytest.raises(ValueError, match="batch_slice=i"):
        cache.apply_ln_to_stack(stack[:, 1], pos_slice=0, has_batch_dim=False)
    with pytest.raises(ValueError, match="batch_slice=i"):
        cache.logit_attrs(stack[:, 1], LABEL, pos_slice=0, has_batch_dim=False)
    one = cache.logit_attrs(stack[:, 1], LABEL, pos_slice=0, has_batch_dim=False, batch_slice=1)
    both = cache.logit_attrs(stack, LABEL, pos_slice=0)
    assert max_diff(one, both[:, 1]) < 1e-6 and max_diff(one, both[:, 0]) > 1e-3
    scale = cache["ln_final.hook_scale"][1, 0]  # the hand-written reference: example 1's [CLS] scale
    want = (stack[:, 1] - stack[:, 1].mean(-1, keepdim=True)) / scale
    assert max_diff(cache.apply_ln_to_stack(stack[:, 1], pos_slice=0, has_batch_dim=False, batch_slice=1), want) < 1e-6


# 6. agreement(): ties, structural zeros, k >= n ---------------------------------------------------------
def test_agreement_breaks_ties_by_position():
    exact = torch.tensor([3.0, 1.0, 1.0, 1.0])  # three tied for second place
    approx = torch.tensor([3.0, 1.0, 0.0, 0.0])
    got = agreement(exact, approx, k=2)
    assert got["topk_overlap"] == 1.0  # ties go to the lower index: {0, 1} in both


def test_agreement_excludes_pairs_the_sender_cannot_reach(small_model):
    clean, corrupt = _pair(small_model.cfg)
    exact = PathPatcher(small_model, clean, corrupt, Logit(LABEL)).matrix(receivers="mlps")
    approx = attribution_patch(small_model, clean, corrupt, Logit(LABEL)).matrix(receivers="mlps")
    from vivit_lens.paths import reaches

    keep = torch.tensor([[reaches(s, g[0]) for g in exact.receivers] for s in exact.senders])
    assert (~keep).sum() > 0 and exact.values[~keep].abs().max() == 0  # structural zeros exist
    got = agreement(exact, approx, k=5)
    want = agreement(exact.values[keep], approx.values[keep], k=5)
    assert got == want and got["n"] == int(keep.sum())


def test_agreement_flags_a_trivial_top_k():
    a, b = torch.tensor([1.0, -2.0, 3.0, 0.5]), torch.tensor([0.1, 0.2, 0.3, 0.4])
    assert agreement(a, b, k=4)["topk_trivial"] is True and agreement(a, b, k=2)["topk_trivial"] is False


# Also: plain TransformerLens metrics in path and attribution patching --------------------------------
def test_path_and_attribution_patching_take_a_plain_metric(small_model):
    clean, corrupt = _pair(small_model.cfg)
    mean_diff = PathPatcher(small_model, clean, corrupt, tl_logit_diff).senders_into(FinalResid())
    per_clip = PathPatcher(small_model, clean, corrupt, LogitDiff(LABEL, OTHER)).senders_into(FinalResid())
    assert max_diff(mean_diff.values, per_clip.values) < 1e-5  # the batch mean of each clip's effect
    a_plain = attribution_patch(small_model, clean, corrupt, tl_logit_diff)
    a_metric = attribution_patch(small_model, clean, corrupt, LogitDiff(LABEL, OTHER))
    assert max_diff(a_plain.head_out, a_metric.head_out) < 1e-5
    assert max_diff(a_plain.matrix().values, a_metric.matrix().values) < 1e-5
    with pytest.raises(TypeError, match="(?i)callable"):
        PathPatcher(small_model, clean, corrupt, "logit")


# Also: a recovery from a delta below float32 resolution warns ----------------------------------------
def test_recovery_of_a_tiny_delta_warns_in_float32_only(small_model):
    r = torch.randn(1, 1, 48, generator=torch.Generator().manual_seed(0)) * 3
    tiny = r + 1e-5 * torch.randn(1, 1, 48, generator=torch.Generator().manual_seed(1))
    with pytest.warns(PrecisionWarning, match="float64"):
        SignalRecovery("blocks.2.hook_resid_post", (0,), tiny, r)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SignalRecovery("blocks.2.hook_resid_post", (0,), tiny.double(), r.double())
        SignalRecovery("blocks.2.hook_resid_post", (0,), r + 0.1, r)
