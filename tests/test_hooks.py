"""Hook points: names, shapes, identities, caching, removal, resuming, and the per-head weight layout."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_hf, max_diff, pixels
from vivit_lens import HookedViViT, HookNameError, InputError, ViViTConfig

PER_BLOCK = [
    "hook_resid_pre", "ln1.hook_scale", "ln1.hook_normalized", "hook_q_input", "hook_k_input", "hook_v_input",
    "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_attn_scores", "attn.hook_pattern", "attn.hook_z",
    "attn.hook_result", "hook_attn_out", "hook_resid_mid", "hook_mlp_in", "ln2.hook_scale", "ln2.hook_normalized",
    "mlp.hook_pre", "mlp.hook_post", "hook_mlp_out", "hook_resid_post",
]  # fmt: skip


@pytest.fixture(scope="module")
def x(small_model):
    return pixels(small_model.cfg, batch=2, seed=11)


@pytest.fixture(scope="module")
def full_cache(small_model, x):
    with torch.no_grad():
        return small_model.run_with_cache(x)


def test_hook_names_are_pinned_in_forward_order():
    model = HookedViViT(ViViTConfig(image_size=16, num_frames=2, tubelet_size=(2, 8, 8), hidden_size=8,
                                    num_hidden_layers=2, num_attention_heads=2, intermediate_size=8))
    expected = ["hook_embed", "hook_pos_embed"]
    expected += [f"blocks.{layer}.{h}" for layer in range(2) for h in PER_BLOCK]
    expected += ["ln_final.hook_scale", "ln_final.hook_normalized"]
    assert model.hook_names == expected


def test_every_hook_has_the_shape_its_axes_declare(small_model, full_cache):
    cfg = small_model.cfg
    sizes = dict(batch=2, pos=cfg.n_pos, query_pos=cfg.n_pos, key_pos=cfg.n_pos, head=cfg.n_heads,
                 d_head=cfg.d_head, d_model=cfg.d_model, d_mlp=cfg.d_mlp)
    sizes["1"] = 1
    _, cache = full_cache
    assert list(cache) == small_model.hook_names, "a full cache holds every hook, in order"
    for name, hp in small_model.hook_dict.items():
        want = tuple(sizes[a] for a in hp.axes.split())
        assert tuple(cache[name].shape) == want, f"{name}: {tuple(cache[name].shape)} vs declared [{hp.axes}]"


def test_residual_identities_are_exact(small_model, full_cache):
    _, cache = full_cache
    for l in range(small_model.cfg.n_layers):
        assert torch.equal(cache[f"blocks.{l}.hook_resid_mid"], cache[f"blocks.{l}.hook_resid_pre"] + cache[f"blocks.{l}.hook_attn_out"])
        assert torch.equal(cache[f"blocks.{l}.hook_resid_post"], cache[f"blocks.{l}.hook_resid_mid"] + cache[f"blocks.{l}.hook_mlp_out"])
        if l + 1 < small_model.cfg.n_layers:
            assert torch.equal(cache[f"blocks.{l}.hook_resid_post"], cache[f"blocks.{l + 1}.hook_resid_pre"])
    assert torch.equal(cache["blocks.0.hook_resid_pre"], cache["hook_embed"] + cache["hook_pos_embed"])


def test_head_results_sum_to_attn_out(small_model, x):
    """Hooking hook_result switches attn_out to sum(heads) + b_O; compare with the plain fused o_proj."""
    with torch.no_grad():
        _, plain = small_model.run_with_cache(x, names_filter=lambda n: n.endswith(("hook_attn_out", "hook_z")))
        _, split = small_model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_result"))
    for l, block in enumerate(small_model.blocks):
        total = split[f"blocks.{l}.attn.hook_result"].sum(dim=2) + block.attn.b_O
        assert max_diff(total, plain[f"blocks.{l}.hook_attn_out"]) < 1e-5
        # Independent: per-head result = z_h @ W_O[h], written with plain matmuls.
        z = plain[f"blocks.{l}.attn.hook_z"]
        for h in range(small_model.cfg.n_heads):
            ref = z[:, :, h] @ block.attn.W_O[h]
            assert max_diff(split[f"blocks.{l}.attn.hook_result"][:, :, h], ref) < 1e-5


def test_per_head_weights_match_hf_layout(small_hf, small_model, full_cache):
    """W_Q[h] is HF's q_proj rows for head h, transposed; hook_q = ln1_out @ W_Q + b_Q."""
    d_head = small_model.cfg.d_head
    hf_q = small_hf.vivit.layers[1].attention.q_proj
    for h in range(small_model.cfg.n_heads):
        assert torch.equal(small_model.W_Q[1, h], hf_q.weight[h * d_head:(h + 1) * d_head].T)
        assert torch.equal(small_model.b_Q[1, h], hf_q.bias[h * d_head:(h + 1) * d_head])
    assert torch.equal(small_model.W_U, small_hf.classifier.weight.T)
    assert torch.equal(small_model.W_in[2], small_hf.vivit.layers[2].mlp.fc1.weight.T)
    _, cache = full_cache
    normed = cache["blocks.1.ln1.hook_normalized"]
    q = torch.einsum("bpd,hde->bphe", normed, small_model.W_Q[1]) + small_model.b_Q[1]
    assert max_diff(q, cache["blocks.1.attn.hook_q"]) < 1e-5
    assert small_model.W_Q.shape == (3, 4, 48, 12) and small_model.W_O.shape == (3, 4, 12, 48)


@pytest.mark.parametrize("hook", ["blocks.0.hook_resid_pre", "blocks.1.attn.hook_z", "blocks.2.mlp.hook_post",
                                  "blocks.1.hook_attn_out", "blocks.2.hook_mlp_in", "hook_embed"])
def test_identity_hook_is_bit_identical(small_model, x, hook):
    with torch.no_grad():
        base = small_model(x)
        hooked = small_model.run_with_hooks(x, fwd_hooks=[(hook, lambda t, hook: t)])
    assert torch.equal(base, hooked)


@pytest.mark.parametrize("hook", ["blocks.1.attn.hook_pattern", "blocks.1.attn.hook_result", "blocks.1.hook_q_input",
                                  "blocks.0.ln1.hook_scale", "ln_final.hook_normalized"])
def test_identity_hook_on_explicit_path_is_equal_within_rounding(small_model, x, hook):
    """These hooks switch to the explicit computation (pattern, per-head sums, split inputs, step-by-step LN)."""
    with torch.no_grad():
        d = max_diff(small_model(x), small_model.run_with_hooks(x, fwd_hooks=[(hook, lambda t, hook: t.clone())]))
    assert d < 1e-5


def test_pattern_only_materialised_when_asked(small_model, x, sdpa_calls):
    with torch.no_grad():
        small_model(x)
        assert sdpa_calls["n"] == 3
        small_model.run_with_cache(x, names_filter="blocks.1.attn.hook_pattern")
        assert sdpa_calls["n"] == 3 + 2, "only the hooked layer computes the pattern explicitly"


def test_split_q_input_equals_patching_that_heads_query(small_model, small_hf, x):
    """Patching head h's q_input with another run's resid_pre == patching hook_q[h] with that run's query."""
    other = pixels(small_model.cfg, batch=2, seed=99)
    with torch.no_grad():
        _, c = small_model.run_with_cache(other, names_filter=["blocks.2.hook_resid_pre", "blocks.2.attn.hook_q"])
        h = 1

        def q_input(t, hook):
            t[:, :, h] = c["blocks.2.hook_resid_pre"]
            return t

        def q(t, hook):
            t[:, :, h] = c["blocks.2.attn.hook_q"][:, :, h]
            return t

        a = small_model.run_with_hooks(x, fwd_hooks=[("blocks.2.hook_q_input", q_input)])
        b = small_model.run_with_hooks(x, fwd_hooks=[("blocks.2.attn.hook_q", q)])
        base = small_model(x)
    assert max_diff(a, b) < 1e-5
    assert max_diff(a, base) > 1e-3, "the patch must change something for this test to mean anything"


def test_mlp_in_hook_does_not_touch_the_residual(small_model, x):
    with torch.no_grad():
        _, clean = small_model.run_with_cache(x, names_filter="blocks.1.hook_resid_mid")

        def zero(t, hook):
            t.zero_()  # in place, on purpose
            return t

        _, c = small_model.run_with_cache(x, names_filter=lambda n: n in ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out", "blocks.1.hook_resid_post"))
        with small_model.hooks([("blocks.1.hook_mlp_in", zero)]):
            _, z = small_model.run_with_cache(x, names_filter=lambda n: n in ("blocks.1.hook_resid_mid", "blocks.1.hook_resid_post", "blocks.1.hook_mlp_out"))
    assert torch.equal(z["blocks.1.hook_resid_mid"], clean["blocks.1.hook_resid_mid"])
    # MLP of a zero input (LN of zeros is the LN bias): resid_post = resid_mid + mlp(ln2(0))
    block = small_model.blocks[1]
    want = block.mlp(block.ln2.b.expand_as(z["blocks.1.hook_resid_mid"]))
    assert max_diff(z["blocks.1.hook_mlp_out"], want) < 1e-5


def test_cache_holds_exactly_what_the_filter_asked(small_model, x):
    with torch.no_grad():
        _, c = small_model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_z"))
        assert list(c) == [f"blocks.{l}.attn.hook_z" for l in range(3)]
        _, c = small_model.run_with_cache(x, names_filter=["blocks.2.hook_mlp_out", "hook_embed"])
        assert list(c) == ["hook_embed", "blocks.2.hook_mlp_out"]
        _, c = small_model.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern", device="cpu")
        assert list(c) == ["blocks.0.attn.hook_pattern"]
    assert c["pattern", 0] is c["blocks.0.attn.hook_pattern"]
    assert all(not hp.has_hooks for hp in small_model.hook_dict.values())


def test_hooks_are_removed_after_an_exception(small_model, x):
    seen = []
    with pytest.raises(RuntimeError, match="boom"):
        with small_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: seen.append(1))]):
            small_model(x)
            raise RuntimeError("boom")
    assert seen == [1]
    assert all(not hp.has_hooks for hp in small_model.hook_dict.values())
    with torch.no_grad():
        small_model(x)
    assert seen == [1]

    def bad(t, hook):
        raise ValueError("inside a hook")

    with pytest.raises(ValueError, match="inside a hook"):
        small_model.run_with_hooks(x, fwd_hooks=[("blocks.1.hook_resid_pre", bad)])
    assert all(not hp.has_hooks for hp in small_model.hook_dict.values())


def test_reset_hooks_and_predicate_names(small_model, x):
    small_model.add_hook(lambda n: n.endswith("hook_resid_post"), lambda t, hook: None)
    assert sum(hp.has_hooks for hp in small_model.hook_dict.values()) == 3
    small_model.reset_hooks()
    assert not any(hp.has_hooks for hp in small_model.hook_dict.values())


def test_unknown_hook_name_lists_closest(small_model, x):
    with pytest.raises(HookNameError, match=r"blocks\.1\.attn\.hook_z"):
        small_model.run_with_hooks(x, fwd_hooks=[("blocks.1.attn.hook_zz", lambda t, hook: t)])
    with pytest.raises(HookNameError, match="closest valid names"):
        small_model.run_with_cache(x, names_filter=["blocks.1.resid_pre"])


def test_hook_returning_wrong_shape_fails_clearly(small_model, x):
    with pytest.raises(ValueError, match=r"expected a tensor of shape"):
        small_model.run_with_hooks(x, fwd_hooks=[("blocks.0.hook_resid_pre", lambda t, hook: t[:, :1])])


@pytest.mark.parametrize("layer", [0, 1, 2, 3])
def test_resume_from_cached_resid_reproduces_logits(small_model, x, layer):
    with torch.no_grad():
        logits, cache = small_model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_pre"))
        resid = cache[f"blocks.{layer}.hook_resid_pre"] if layer < 3 else small_model(x, return_type="resid")
        resumed = small_model(resid, start_at_layer=layer)
        stopped = small_model(x, stop_at_layer=layer)
    assert torch.equal(resumed, logits)
    assert torch.equal(stopped, resid)


def test_backward_hooks_and_incl_bwd_match_autograd(small_model, x):
    name = "blocks.1.hook_resid_mid"
    logits, cache = small_model.run_with_cache(x, names_filter=name, incl_bwd=True)
    assert name + "_grad" in cache
    # Independent: autograd w.r.t. a tensor captured by a plain forward hook.
    captured = {}

    def keep(t, hook):
        captured["t"] = t
        return t

    out = small_model.run_with_hooks(x, fwd_hooks=[(name, keep)])
    (grad,) = torch.autograd.grad(out.sum(), captured["t"])
    assert max_diff(cache[name + "_grad"], grad) < 1e-6
    grads = []
    with small_model.hooks(bwd_hooks=[(name, lambda g, hook: grads.append(g))]):
        small_model(x).sum().backward()
    small_model.zero_grad(set_to_none=True)
    assert max_diff(grads[0], grad) < 1e-6


@pytest.mark.parametrize(
    "shape, dtype, match",
    [
        ((8, 3, 32, 32), torch.float32, r"5 axes.*unsqueeze"),
        ((1, 6, 3, 32, 32), torch.float32, r"frames 6 != 8"),
        ((1, 8, 1, 32, 32), torch.float32, r"channels 1 != 3"),
        ((1, 8, 3, 32, 40), torch.float32, r"width 40 != 32"),
        ((1, 8, 3, 224, 224), torch.float32, r"height 224 != 32.*width 224 != 32"),
        ((1, 8, 3, 32, 32), torch.uint8, r"float tensor.*torch.uint8"),
    ],
)
def test_bad_input_fails_before_any_compute(small_model, shape, dtype, match):
    reached = []
    with small_model.hooks([("hook_embed", lambda t, hook: reached.append(1))]):
        with pytest.raises(InputError, match=match):
            small_model(torch.zeros(shape, dtype=dtype))
    assert reached == []


def test_bad_resid_and_layer_arguments(small_model):
    with pytest.raises(InputError, match=r"pos=65, d_model=48"):
        small_model(torch.zeros(1, 64, 48), start_at_layer=1)
    with pytest.raises(ValueError, match="start_at_layer"):
        small_model(torch.zeros(1, 65, 48), start_at_layer=9)
    with pytest.raises(ValueError, match="after stop_at_layer"):
        small_model(torch.zeros(1, 65, 48), start_at_layer=2, stop_at_layer=1)


def test_float64_input_is_cast_to_the_model_dtype(small_model, x):
    with torch.no_grad():
        assert max_diff(small_model(x.double()), small_model(x)) < 1e-6


def test_hf_model_from_memory_equals_from_folder(small_hf, small_model, x):
    with torch.no_grad():
        assert torch.equal(HookedViViT.from_hf_model(small_hf)(x), small_model(x))


def test_different_architecture_hooks_work_with_one_head():
    hf = make_hf(hidden_size=16, num_attention_heads=1, intermediate_size=32, num_hidden_layers=1)
    model = HookedViViT.from_hf_model(hf)
    xx = pixels(hf.config, batch=1)
    with torch.no_grad():
        _, c = model.run_with_cache(xx, names_filter=lambda n: "result" in n or "attn_out" in n)
    assert max_diff(c["blocks.0.attn.hook_result"].sum(2) + model.b_O[0], c["blocks.0.hook_attn_out"]) < 1e-5
