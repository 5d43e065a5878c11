"""ActivationCache analysis against identities: decompositions sum to the residual, head writes sum
to attn_out, attributions sum to the logit, the logit lens ends at the logits, save/load without a model."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import max_diff, pixels
from vivit_lens.cache import ActivationCache


@pytest.fixture(scope="module")
def run(small_model):
    x = pixels(small_model.cfg, batch=2, seed=5)
    with torch.no_grad():
        logits, cache = small_model.run_with_cache(x)
    return x, logits, cache


def test_decompose_resid_sums_to_the_residual(small_model, run):
    _, _, cache = run
    n = small_model.cfg.n_layers
    for layer in range(n + 1):
        stack, labels = cache.decompose_resid(layer, return_labels=True)
        want = cache[f"blocks.{layer}.hook_resid_pre"] if layer < n else cache[f"blocks.{n - 1}.hook_resid_post"]
        assert labels[:2] == ["embed", "pos_embed"] and len(labels) == 2 + 2 * layer
        assert max_diff(stack.sum(0), want) < 1e-5, f"layer {layer}: {max_diff(stack.sum(0), want):.2e}"
    stack, labels = cache.decompose_resid(1, mlp_input=True, return_labels=True)
    assert labels[-1] == "1_attn_out" and max_diff(stack.sum(0), cache["resid_mid", 1]) < 1e-5
    attn_only = cache.decompose_resid(mode="attn", incl_embeds=False, pos_slice=0)
    assert attn_only.shape == (n, 2, small_model.cfg.d_model)
    assert torch.equal(attn_only[1], cache["attn_out", 1][:, 0])


def test_head_results_sum_to_attn_out_minus_bias(small_model, run):
    _, _, cache = run
    cfg = small_model.cfg
    stack, labels = cache.stack_head_results(return_labels=True, model=small_model)
    assert stack.shape == (cfg.n_layers * cfg.n_heads, 2, cfg.n_pos, cfg.d_model)
    assert labels[:5] == ["L0H0", "L0H1", "L0H2", "L0H3", "L1H0"]
    per_layer = stack.reshape(cfg.n_layers, cfg.n_heads, *stack.shape[1:])
    for l in range(cfg.n_layers):
        want = cache["attn_out", l] - small_model.b_O[l]
        assert max_diff(per_layer[l].sum(0), want) < 1e-5
        # Independent: one head by plain matmul.
        assert max_diff(per_layer[l, 2], cache["z", l][:, :, 2] @ small_model.W_O[l, 2]) < 1e-5
    with_rest = cache.stack_head_results(2, incl_remainder=True, pos_slice=[0, 3], model=small_model)
    assert with_rest.shape[0] == 2 * cfg.n_heads + 1
    assert max_diff(with_rest.sum(0), cache["resid_pre", 2][:, [0, 3]]) < 1e-5
    assert cache.stack_head_results(0, model=small_model).shape == (0, 2, cfg.n_pos, cfg.d_model)


def test_dla_of_all_components_sums_to_the_logit(small_model, run):
    _, logits, cache = run
    cache = cache.with_weights(small_model)
    attrs, labels = cache.dla_components(3)
    assert labels[-1] == "bias" and attrs.shape == (len(labels), 2)
    assert max_diff(attrs.sum(0), logits[:, 3]) < 1e-4, f"{max_diff(attrs.sum(0), logits[:, 3]):.2e}"
    diff, _ = cache.dla_components(3, incorrect_tokens=5)
    assert max_diff(diff.sum(0), logits[:, 3] - logits[:, 5]) < 1e-4
    per_clip, _ = cache.dla_components(torch.tensor([1, 6]))
    assert max_diff(per_clip.sum(0), logits[[0, 1], [1, 6]]) < 1e-4
    label_name = small_model.cfg.id2label[4]
    by_name, _ = cache.dla_components(label_name)
    assert max_diff(by_name.sum(0), logits[:, 4]) < 1e-4
    # One component by hand: centre, divide by the [CLS] final-LN scale, dot with w_ln * W_U[:, c].
    x = cache["mlp_out", 1][:, 0]
    scale = cache["ln_final.hook_scale"][:, 0]
    hand = ((x - x.mean(-1, keepdim=True)) / scale) @ (small_model.ln_final.w * small_model.W_U[:, 3])
    assert max_diff(attrs[labels.index("1_mlp_out")], hand) < 1e-5


def test_dla_by_head_and_by_token_are_consistent(small_model, run):
    _, _, cache = run
    cfg = small_model.cfg
    heads = cache.dla_heads(3, model=small_model)
    assert heads.shape == (cfg.n_layers, cfg.n_heads, 2)
    comps, labels = cache.dla_components(3, model=small_model)
    b_O_stack = small_model.b_O[:, None, :].expand(-1, 2, -1)  # b_O belongs to no head
    b_O_attr = cache.logit_attrs(b_O_stack, 3, pos_slice=0, model=small_model)
    for l in range(cfg.n_layers):
        assert max_diff(heads[l].sum(0) + b_O_attr[l], comps[labels.index(f"{l}_attn_out")]) < 1e-5
    tokens = cache.dla_tokens(3, model=small_model)
    assert tokens.shape == (cfg.n_layers, cfg.n_heads, 2, cfg.n_pos)
    assert max_diff(tokens.sum(-1), heads) < 1e-5
    # One term by hand: pattern[h, CLS, s] * (v[s, h] @ W_O[h]), frozen LN at CLS, class direction.
    l, h, s = 1, 2, 17
    term = cache["pattern", l][:, h, 0, s, None] * (cache["v", l][:, s, h] @ small_model.W_O[l, h])
    hand = cache.logit_attrs(term[None], 3, pos_slice=0, model=small_model)[0]
    assert max_diff(tokens[l, h, :, s], hand) < 1e-6
    # Without the cached patterns, the [CLS] row is rebuilt from q and k.
    qk_only = ActivationCache({k: v for k, v in cache.items() if "pattern" not in k and "scores" not in k}, cache.cfg)
    assert max_diff(qk_only.dla_tokens(3, model=small_model), tokens) < 1e-6
    grid = cache.to_grid(tokens)
    t, hh, w = cfg.grid_shape
    assert grid.shape == (cfg.n_layers, cfg.n_heads, 2, t, hh, w)
    assert torch.equal(grid[1, 2, 0, 1, 2, 3], tokens[1, 2, 0, 1 + 1 * hh * w + 2 * w + 3])
    assert max_diff(cache.per_frame(tokens)[..., 1], tokens[..., 1 + hh * w:1 + 2 * hh * w].sum(-1)) < 1e-6
    assert max_diff(cache.per_location(tokens).sum((-1, -2)), tokens[..., 1:].sum(-1)) < 1e-5


def test_logit_lens_ends_at_the_logits(small_model, run):
    _, logits, cache = run
    n = small_model.cfg.n_layers
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True, model=small_model)
    assert labels == [f"{l}_pre" for l in range(n)] + ["final_post"]
    assert max_diff(stack[-1][:, 0] @ small_model.W_U + small_model.b_U, logits) < 1e-5
    assert max_diff(stack[-1], cache["ln_final.hook_normalized"]) < 1e-5
    _, labels = cache.accumulated_resid(2, incl_mid=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre"]
    raw = cache.accumulated_resid(1, pos_slice=0)
    assert torch.equal(raw[1], cache["resid_pre", 1][:, 0])
    # At an inner layer apply_ln divides by that layer's cached ln1 scale (TransformerLens semantics).
    inner = cache.accumulated_resid(1, apply_ln=True)
    x = cache["resid_pre", 1]
    want = ((x - x.mean(-1, keepdim=True)) / cache["blocks.1.ln1.hook_scale"] * small_model.blocks[1].ln1.w
            + small_model.blocks[1].ln1.b)  # fmt: skip
    assert max_diff(inner[-1] * small_model.blocks[1].ln1.w + small_model.blocks[1].ln1.b, want) < 1e-5
    assert max_diff(want, cache["blocks.1.ln1.hook_normalized"]) < 1e-5


def test_apply_ln_to_stack_freezes_the_scale(small_model, run):
    _, _, cache = run
    stack = cache.decompose_resid(apply_ln=True)
    w, b = small_model.ln_final.w, small_model.ln_final.b
    assert max_diff(stack.sum(0) * w + b, cache["ln_final.hook_normalized"]) < 1e-5
    # The scale computed from the residual when hook_scale is not cached.
    slim = ActivationCache({k: v for k, v in cache.items() if "hook_scale" not in k}, cache.cfg)
    assert max_diff(slim.ln_scale(None), cache["ln_final.hook_scale"]) < 1e-6
    assert max_diff(slim.ln_scale(1, mlp_input=True), cache["blocks.1.ln2.hook_scale"]) < 1e-6
    one = cache.apply_ln_to_stack(cache.decompose_resid(pos_slice=0), pos_slice=0, batch_slice=[1])
    assert one.shape[1] == 1 and max_diff(one[:, 0], stack[:, 1, 0]) < 1e-6


def test_save_and_load_without_the_model(small_model, run, tmp_path):
    _, logits, cache = run
    cache.save(tmp_path / "plain.safetensors")
    plain = ActivationCache.load(tmp_path / "plain.safetensors")
    assert list(plain) == list(cache) and all(torch.equal(plain[k], cache[k]) for k in cache)
    assert plain.cfg == small_model.cfg and not plain.has_weights
    with pytest.raises(ValueError, match="with_weights"):
        plain.dla_components(3)
    cache.with_weights(small_model).save(tmp_path / "full.safetensors")
    loaded = ActivationCache.load(tmp_path / "full.safetensors")
    assert list(loaded) == list(cache), "weights are stored apart from the activations"
    attrs, _ = loaded.dla_components(3)
    assert max_diff(attrs.sum(0), logits[:, 3]) < 1e-4
    assert torch.equal(loaded.dla_heads(3), cache.dla_heads(3, model=small_model))
