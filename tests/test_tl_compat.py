"""TransformerLens 4.3 itself as the reference: its patching functions, ActivationCache and get_act_name,
run on HookedViViT, must give our numbers (and our functions must take its arguments and conventions)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_hf, max_diff, pixels
from vivit_lens import HookedViViT
from vivit_lens import patching as ours
from vivit_lens.metrics import LogitDiff
from vivit_lens.paths import Head, HeadInput, PathPatcher
from vivit_lens.utils import get_act_name

tl_patching = pytest.importorskip("transformer_lens.patching")
from transformer_lens.ActivationCache import ActivationCache as TLCache  # noqa: E402
from transformer_lens.utilities import get_act_name as tl_get_act_name  # noqa: E402

LABEL, OTHER = 3, 5


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    """A TransformerLens metric: the patched logits of the whole batch in, one number out."""
    return (logits[:, LABEL] - logits[:, OTHER]).mean()


def _pair(model, batch: int):
    clean = pixels(model.cfg, batch=batch, seed=31)
    corrupt = clean.clone()
    corrupt[:, 4:, :, 8:24, 8:24] = pixels(model.cfg, batch=batch, seed=32)[:, 4:, :, 8:24, 8:24]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        _, corrupt_cache = model.run_with_cache(corrupt)
    return clean, corrupt, clean_cache, corrupt_cache


@pytest.fixture(scope="module", params=[1, 2], ids=["batch1", "batch2"])
def pair(request, small_model):
    return _pair(small_model, request.param)


# Config ---------------------------------------------------------------------------------------------
def test_config_has_what_transformer_lens_reads(small_model):
    cfg = small_model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_mlp) == (3, 4, 48, 12, 96)
    assert cfg.n_ctx == cfg.n_pos == 65 and cfg.n_key_value_heads is None and cfg.d_vocab_out == 7
    assert cfg.act_fn == "gelu_fast" and cfg.normalization_type == "LN" and cfg.positional_embedding_type == "standard"
    assert cfg.attn_only is False and cfg.eps == cfg.layer_norm_eps and cfg.attn_scale == pytest.approx(12**0.5)
    assert cfg.device == torch.device("cpu") and cfg.dtype == torch.float32


def test_config_device_and_dtype_follow_the_model():
    model = HookedViViT.from_hf_model(make_hf())
    shared = model.cfg
    model.double()
    assert model.cfg.dtype == torch.float64 and shared.dtype == torch.float32  # another model's config is untouched
    model.to("meta")
    assert model.cfg.device.type == "meta" and model.W_U.device.type == "meta"
    assert model.cfg.to_hf_dict() == shared.to_hf_dict()  # placement is no architectural field


# TransformerLens' own patching functions on our model -----------------------------------------------
ALL_POS = ["attn_head_out_all_pos", "attn_head_q_all_pos", "attn_head_k_all_pos", "attn_head_v_all_pos",
           "attn_head_pattern_all_pos"]  # fmt: skip


@pytest.mark.parametrize("name", ALL_POS)
def test_transformer_lens_all_position_patching_runs_unchanged_and_agrees(small_model, pair, name):
    _, corrupt, clean_cache, _ = pair
    theirs = getattr(tl_patching, f"get_act_patch_{name}")(small_model, corrupt, clean_cache, logit_diff)
    mine = getattr(ours, f"get_act_patch_{name}")(small_model, corrupt, clean_cache, logit_diff, progress=False)
    assert mine.shape == theirs.shape == (3, 4)
    assert max_diff(mine, theirs) < 2e-5, max_diff(mine, theirs)


def test_transformer_lens_every_helper_agrees(small_model, pair):
    _, corrupt, clean_cache, _ = pair
    theirs = tl_patching.get_act_patch_attn_head_all_pos_every(small_model, corrupt, clean_cache, logit_diff)
    mine = ours.get_act_patch_attn_head_all_pos_every(small_model, corrupt, clean_cache, logit_diff, progress=False)
    assert mine.shape == theirs.shape == (5, 3, 4) and max_diff(mine, theirs) < 2e-5, max_diff(mine, theirs)


def test_transformer_lens_by_position_reads_the_width_of_a_video(small_model, pair):
    """TL takes the sequence length from `corrupted_tokens.shape[-1]`: for pixels, the frame width (32 of 65
    positions). What it computes there is right; the rest is missing (documented in the README)."""
    _, corrupt, clean_cache, _ = pair
    theirs = tl_patching.get_act_patch_resid_pre(small_model, corrupt, clean_cache, logit_diff)
    mine = ours.get_act_patch_resid_pre(small_model, corrupt, clean_cache, logit_diff, progress=False)
    assert theirs.shape == (3, corrupt.shape[-1]) == (3, 32) and mine.shape == (3, 65)
    assert max_diff(mine[:, :32], theirs) < 2e-5, max_diff(mine[:, :32], theirs)


def test_transformer_lens_generic_patch_with_an_index_table_covers_every_position(small_model, pair):
    """With an explicit index_df TL's generic loop reaches every token: the reference for our by-position sweeps."""
    import pandas as pd

    _, corrupt, clean_cache, _ = pair
    index = pd.DataFrame([(l, p, h) for l in range(3) for p in (0, 1, 31, 32, 64) for h in range(4)],
                         columns=["layer", "pos", "head"])  # fmt: skip
    theirs = tl_patching.generic_activation_patch(
        small_model, corrupt, clean_cache, logit_diff, tl_patching.layer_pos_head_vector_patch_setter, "z",
        index_df=index)  # fmt: skip
    mine = ours.get_act_patch_attn_head_out_by_pos(small_model, corrupt, clean_cache, logit_diff, progress=False)
    expected = mine[tuple(torch.tensor(index[c].tolist()) for c in ("layer", "pos", "head"))]
    assert max_diff(expected, theirs) < 2e-5, max_diff(expected, theirs)
    generic = ours.generic_activation_patch(small_model, corrupt, clean_cache, logit_diff,
                                            ours.layer_pos_head_vector_patch_setter, "z", index_df=index,
                                            progress=False)  # fmt: skip
    assert max_diff(generic, theirs) < 2e-5, max_diff(generic, theirs)


def test_our_functions_take_transformer_lens_keywords(small_model, pair):
    _, corrupt, clean_cache, _ = pair
    by_kw = ours.get_act_patch_mlp_out(small_model, corrupted_tokens=corrupt, clean_cache=clean_cache,
                                       patching_metric=logit_diff, progress=False)  # fmt: skip
    by_pos = ours.get_act_patch_mlp_out(small_model, corrupt, clean_cache, logit_diff, progress=False)
    assert torch.equal(by_kw, by_pos) and by_kw.shape == (3, 65)
    with pytest.raises(TypeError, match="patching_metric"):
        ours.get_act_patch_mlp_out(small_model, corrupt, clean_cache)


def test_batched_metric_objects_average_the_batch(small_model):
    """A Metric (one value per clip) on a batch of 2 is the mean of the two clips patched one at a time."""
    clean, corrupt, clean_cache, _ = _pair(small_model, 2)
    m = LogitDiff(LABEL, OTHER)
    both = ours.get_act_patch_attn_head_out_all_pos(small_model, corrupt, clean_cache, m, progress=False)
    one = [ours.get_act_patch_attn_head_out_all_pos(small_model, corrupt[i:i + 1],
                                                    {k: v[i:i + 1] for k, v in clean_cache.items()}, m, progress=False)
           for i in range(2)]  # fmt: skip
    assert max_diff(both, (one[0] + one[1]) / 2) < 2e-5


def test_generic_activation_patch_matches_transformer_lens(small_model, pair):
    _, corrupt, clean_cache, _ = pair
    for setter, act, axes in [("layer_pos_patch_setter", "resid_mid", ("layer", "pos")),
                              ("layer_head_pattern_patch_setter", "pattern", ("layer", "head_index"))]:  # fmt: skip
        theirs, tdf = tl_patching.generic_activation_patch(small_model, corrupt, clean_cache, logit_diff,
                                                           getattr(tl_patching, setter), act, index_axis_names=axes,
                                                           return_index_df=True)  # fmt: skip
        mine, df = ours.generic_activation_patch(small_model, corrupt, clean_cache, logit_diff,
                                                 getattr(ours, setter), act, index_axis_names=axes,
                                                 return_index_df=True, progress=False)  # fmt: skip
        if act == "resid_mid":  # TL stops at the width; ours covers all 65 positions
            assert mine.shape == (3, 65) and theirs.shape == (3, 32)
            theirs, mine = theirs, mine[:, :32]
            assert df.shape == (3 * 65, 2)
        else:
            assert df.equals(tdf)
        assert max_diff(mine, theirs) < 2e-5, (act, max_diff(mine, theirs))


def test_pattern_dest_src_pos_matches_transformer_lens_on_a_tiny_model():
    model = HookedViViT.from_hf_model(make_hf(num_frames=2, image_size=16, num_hidden_layers=2,
                                              num_attention_heads=2, hidden_size=16, intermediate_size=32))  # fmt: skip
    assert model.cfg.n_pos == 5
    clean, corrupt = pixels(model.cfg, 1, seed=3), pixels(model.cfg, 1, seed=4)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
    import pandas as pd

    index = tl_patching.make_df_from_ranges([2, 2, 5, 5], ["layer", "head_index", "dest_pos", "src_pos"])
    assert isinstance(index, pd.DataFrame)
    theirs = tl_patching.generic_activation_patch(model, corrupt, clean_cache, logit_diff,
                                                  tl_patching.layer_head_dest_src_pos_pattern_patch_setter,
                                                  "pattern", index_df=index).reshape(2, 2, 5, 5)  # fmt: skip
    mine = ours.get_act_patch_attn_head_pattern_dest_src_pos(model, corrupt, clean_cache, logit_diff, progress=False)
    assert mine.shape == (2, 2, 5, 5) and max_diff(mine, theirs) < 2e-5, max_diff(mine, theirs)
    assert theirs.std() > 0  # the entries differ: a real sweep, not a constant


def test_direct_path_patching_is_frozen_path_patching(small_model):
    clean, corrupt, clean_cache, corrupt_cache = _pair(small_model, 1)
    m = LogitDiff(LABEL, OTHER)
    for component in ("q", "v"):
        got = ours.get_act_patch_direct_path(small_model, corrupt, clean_cache, corrupt_cache, logit_diff, 0, 2,
                                             component=component, verbose=False)  # fmt: skip
        pp = PathPatcher(small_model, clean, corrupt, m)
        receivers = [HeadInput(l, h, component) for l in (1, 2) for h in range(4)]
        exact = pp.receivers_of(Head(0, 2), receivers).values[0].reshape(2, 4) + pp.ref_metric.mean()
        assert torch.all(got[0] == 0) and max_diff(got[1:], exact) < 2e-5, max_diff(got[1:], exact)
    every = ours.get_act_patch_direct_path_all_sources(small_model, corrupt, clean_cache, corrupt_cache, logit_diff,
                                                       component="v", verbose=False)  # fmt: skip
    assert every.shape == (3, 4, 3, 4) and torch.equal(every[0, 2], got)


# get_act_name and cache keys --------------------------------------------------------------------------
SHORT = [
    ("embed",), ("pos_embed",), ("scale",), ("normalized",), ("resid_pre", 1), ("resid_mid", 2), ("resid_post", 0),
    ("attn_out", 1), ("mlp_out", 2), ("mlp_in", 0), ("q_input", 1), ("k_input", 2), ("v_input", 0),
    ("q", 1), ("k", 2), ("v", 0), ("z", 1), ("result", 2), ("pattern", 0), ("attn", 1), ("attn_scores", 2),
    ("attn_logits", 0), ("key", 1), ("query", 2), ("value", 0), ("pre", 1), ("post", 2), ("mlp_pre", 0),
    ("mlp_post", 1), ("scale", 1, "ln1"), ("normalized", 2, "ln2"), ("k", 1, "a"), ("resid_pre", 2, "b"),
    ("post", 0, "m"), ("z", 2, "attention"), ("resid_post", 1, "block"), ("resid_pre", "2"),
    ("k6",), ("pre5",), ("scale4ln1",), ("normalized0ln2",), ("z2",), ("pattern11",), ("v3a",), ("post1m",),
    ("blocks.1.attn.hook_z",), ("hook_embed",),
]  # fmt: skip


@pytest.mark.parametrize("args", SHORT, ids=lambda a: "-".join(map(str, a)))
def test_get_act_name_resolves_like_transformer_lens(args):
    assert get_act_name(*args) == tl_get_act_name(*args)


def test_get_act_name_refuses_names_without_a_hook():
    for args, msg in [(("resid_pre",), "needs a layer"), (("scale", 2), "ln1"), (("mid", 1), "unknown"),
                      (("attn_in", 1), "unknown")]:  # fmt: skip
        with pytest.raises(ValueError, match=msg):
            get_act_name(*args)


def test_cache_keys_accept_every_transformer_lens_form(small_model):
    _, cache = small_model.run_with_cache(pixels(small_model.cfg, 1))
    tl = TLCache(dict(cache.cache_dict), small_model)
    for key in ["k2", "pre1", "scale0ln1", ("attn_logits", 1), ("mlp_post", 2), ("value", 1), ("query", -1),
                ("resid_pre", -2), ("scale", -1, "ln2"), ("attn", 0), "pattern2", "hook_pos_embed", "scale"]:  # fmt: skip
        assert cache[key] is tl[key], key
        assert key in cache
    assert "k9" not in cache and "nonsense" not in cache


# ActivationCache against TransformerLens' own, on the same activations and model ------------------------
@pytest.fixture(scope="module")
def caches(small_model):
    with torch.no_grad():
        _, cache = small_model.run_with_cache(pixels(small_model.cfg, 2, seed=5))
    return cache, TLCache(dict(cache.cache_dict), small_model)


def test_cache_knows_its_model(small_model, caches):
    cache, _ = caches
    assert cache.model is small_model and cache.cfg is small_model.cfg
    stack = cache.stack_head_results(pos_slice=0)  # no model= needed
    attrs = cache.logit_attrs(stack, LABEL, pos_slice=0)
    with_model = cache.logit_attrs(cache.stack_head_results(pos_slice=0, model=small_model), LABEL, pos_slice=0,
                                   model=small_model)  # fmt: skip
    assert torch.equal(attrs, with_model)
    assert cache.accumulated_resid(apply_ln=True).shape == (4, 2, 65, 48)


def test_a_saved_cache_loads_without_a_model(small_model, caches, tmp_path):
    from vivit_lens.cache import ActivationCache

    cache, _ = caches
    cache.with_weights(small_model).save(tmp_path / "c.safetensors")
    loaded = ActivationCache.load(tmp_path / "c.safetensors")
    assert loaded.model is None and loaded.cfg == small_model.cfg
    a, _ = loaded.dla_components(LABEL)
    b, _ = cache.dla_components(LABEL)
    assert max_diff(a, b) == 0
    with pytest.raises(ValueError, match="model's weights"):
        ActivationCache(dict(cache.cache_dict), small_model.cfg).dla_components(LABEL)


def _tl_and_ours(caches, method, *args, **kwargs):
    cache, tl = caches
    return getattr(cache, method)(*args, **kwargs), getattr(tl, method)(*args, **kwargs)


@pytest.mark.parametrize("method,args,kwargs", [
    ("stack_head_results", (), {}),
    ("stack_head_results", (2,), {"apply_ln": True, "pos_slice": 0, "incl_remainder": True}),
    ("get_neuron_results", (1,), {}),
    ("get_neuron_results", (2,), {"neuron_slice": [3, 5, 7], "pos_slice": 0}),
    ("stack_neuron_results", (2,), {"pos_slice": 0, "incl_remainder": True, "apply_ln": True}),
    ("stack_neuron_results", (3,), {"pos_slice": [0, 4], "neuron_slice": 2, "apply_ln": True}),
    ("stack_neuron_results", (1,), {"mlp_input": True, "incl_remainder": True, "apply_ln": True, "pos_slice": 0}),
    ("accumulated_resid", (), {"apply_ln": True, "pos_slice": 0}),
    ("accumulated_resid", (2,), {"incl_mid": True, "apply_ln": True}),
    ("decompose_resid", (2,), {"mlp_input": True, "apply_ln": True, "pos_slice": 0}),
], ids=lambda v: str(v)[:40])  # fmt: skip
def test_cache_methods_match_transformer_lens(caches, method, args, kwargs):
    mine, theirs = _tl_and_ours(caches, method, *args, **kwargs)
    assert mine.shape == theirs.shape and max_diff(mine, theirs) < 1e-5, max_diff(mine, theirs)


def test_neuron_projection_matches_transformer_lens(small_model, caches):
    for p in (small_model.W_U[:, LABEL].detach(), small_model.W_U.detach()):
        for apply_ln in (False, True):
            mine, theirs = _tl_and_ours(caches, "stack_neuron_results", 3, pos_slice=0, incl_remainder=True,
                                        apply_ln=apply_ln, project_output_onto=p)  # fmt: skip
            assert mine.shape == theirs.shape and max_diff(mine, theirs) < 1e-5, max_diff(mine, theirs)
        mine, theirs = _tl_and_ours(caches, "get_neuron_results", 1, project_output_onto=p)
        assert max_diff(mine, theirs) < 1e-5


def test_full_resid_decomposition_sums_to_the_residual(small_model, caches):
    """TL's component order and labels; the pieces add up to the residual that layer reads (an identity)."""
    cache, tl = caches
    stack, labels = cache.get_full_resid_decomposition(return_labels=True)
    assert stack.shape == (12 + 3 * 96 + 3, 2, 65, 48)
    assert labels[:2] == ["L0H0", "L0H1"] and labels[12] == "L0N0" and labels[-3:] == ["embed", "pos_embed", "bias"]
    assert max_diff(stack.sum(0), cache["resid_post", 2]) < 1e-4
    mid, mid_labels = cache.get_full_resid_decomposition(1, mlp_input=True, expand_neurons=False, return_labels=True)
    assert mid_labels == [f"L{l}H{h}" for l in (0, 1) for h in range(4)] + ["0_mlp_out", "embed", "pos_embed", "bias"]
    assert max_diff(mid.sum(0), cache["resid_mid", 1]) < 1e-5
    heads_tl, heads_labels = tl.stack_head_results(2, return_labels=True)
    assert max_diff(mid[:8], heads_tl) < 1e-6 and mid_labels[:8] == heads_labels
    d = small_model.W_U[:, LABEL].detach()
    proj = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=0, project_output_onto=d)
    full = cache.get_full_resid_decomposition(apply_ln=True, pos_slice=0) @ d
    assert proj.shape == (303, 2) and max_diff(proj, full) < 1e-5


def test_batch_dim_methods_match_transformer_lens(small_model, caches):
    cache, tl = caches
    one, tl_one = cache.apply_slice_to_batch_dim(1), tl.apply_slice_to_batch_dim(1)
    assert not one.has_batch_dim and one.model is small_model
    assert all(torch.equal(one[k], tl_one[k]) for k in one)
    two = cache.apply_slice_to_batch_dim(slice(0, 1))
    assert two.has_batch_dim and two["z", 0].shape[0] == 1
    unbatched = two.remove_batch_dim()
    assert not unbatched.has_batch_dim and unbatched["z", 0].shape == (65, 4, 12)
    assert torch.equal(unbatched["resid_pre", 1], cache["resid_pre", 1][0])
    with pytest.raises(ValueError, match="2 examples"):
        small_model.run_with_cache(pixels(small_model.cfg, 2), remove_batch_dim=True)
    _, solo = small_model.run_with_cache(pixels(small_model.cfg, 1), remove_batch_dim=True)
    assert solo["z", 0].shape == (65, 4, 12)
    # analysis on an unbatched cache: TL's own methods as reference
    tl_solo = TLCache(dict(solo.cache_dict), small_model, has_batch_dim=False)
    for method, kwargs in [("stack_head_results", {"pos_slice": 0, "apply_ln": True}),
                           ("accumulated_resid", {"apply_ln": True, "pos_slice": 0})]:  # fmt: skip
        assert max_diff(getattr(solo, method)(**kwargs), getattr(tl_solo, method)(**kwargs)) < 1e-5


def test_compute_head_results_fills_the_cache(small_model, caches):
    from vivit_lens.cache import ActivationCache

    cache, _ = caches
    fresh = ActivationCache({k: v for k, v in cache.items() if "hook_result" not in k}, small_model)
    assert "blocks.0.attn.hook_result" not in fresh
    fresh.compute_head_results()
    assert max_diff(fresh["result", 1], cache["result", 1]) < 1e-5  # the model's own hook_result


def test_toggle_autodiff_is_global(caches):
    cache, _ = caches
    try:
        cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled()
    finally:
        cache.toggle_autodiff(True)
    assert torch.is_grad_enabled()
