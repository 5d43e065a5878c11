"""Exact path patching against independent references: a hand-written three-pass implementation on raw
torch module hooks (every other component literally frozen), activation patching, direct logit attribution."""

from __future__ import annotations

import csv
import json
from contextlib import contextmanager

import pytest
import torch

from tests.conftest import max_diff, pixels
from vivit_lens.metrics import Logit, SignalRecovery
from vivit_lens.paths import (
    MLP, Embed, FinalResid, Head, HeadInput, MLPInput, PathPatcher, all_receivers, all_senders, path_patch,
    path_patch_receivers, path_patch_senders, reaches,
)  # fmt: skip

LABEL = 3
TOL = 1e-5


def close(got: float, want: float) -> bool:
    """Equal up to float32 rounding: effects here are 1e-5..1e-2, rounding differences ~1e-7."""
    return abs(got - want) < 1e-6 + 1e-3 * abs(want)


def minimal_pair(cfg, batch: int = 2, seed: int = 1):
    """Clean clip and a corrupt copy that differs only in a box in the later frames (like strike vs gutter)."""
    clean = pixels(cfg, batch=batch, seed=seed)
    corrupt = clean.clone()
    other = pixels(cfg, batch=batch, seed=seed + 100)
    corrupt[:, cfg.num_frames // 2 :, :, :16, :16] = other[:, cfg.num_frames // 2 :, :, :16, :16]
    return clean, corrupt


@pytest.fixture(scope="module")
def pair(small_model):
    return minimal_pair(small_model.cfg)


@pytest.fixture(scope="module", params=["denoising", "noising"])
def patcher(request, small_model, pair):
    return PathPatcher(small_model, *pair, Logit(LABEL), direction=request.param, batch_size=5)


@pytest.fixture(scope="module")
def exact_matrix(patcher):
    return patcher.matrix()


# The independent reference ----------------------------------------------------------------------
@contextmanager
def torch_hooks(pairs):
    """Raw torch forward (pre-)hooks: [(module, "pre"|"post", fn)], removed on exit."""
    handles = [m.register_forward_pre_hook(fn) if kind == "pre" else m.register_forward_hook(fn)
               for m, kind, fn in pairs]  # fmt: skip
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _positions(p, n):
    return list(range(n)) if p is None else list(p)


def naive_path_patch(model, clean, corrupt, senders, receivers, metric=Logit(LABEL), direction="denoising",
                     freeze=True):  # fmt: skip
    """Three passes, written plainly on raw torch hooks (`register_forward_hook` on modules; the model's own
    hook API and its split-input path are not used): (1) record every head's z, MLP output and the embedding
    in both runs; (2) rerun the reference with every head and MLP frozen at its reference value except the
    senders (source values at their positions), recording each receiver's input; (3) rerun the reference with
    only the receivers' inputs replaced (a head's q/k/v recomputed by hand from the recorded residual)."""
    ref_x, src_x = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    cfg, blocks, n_pos = model.cfg, model.blocks, model.cfg.n_pos

    def record(x):
        rec = {}
        pairs = [(model.embed, "post", lambda m, i, o: rec.__setitem__("embed", o))]
        for l, b in enumerate(blocks):
            pairs.append((b.attn.hook_z, "post", lambda m, i, o, l=l: rec.__setitem__(("z", l), o.clone())))
            pairs.append((b.mlp, "post", lambda m, i, o, l=l: rec.__setitem__(("mlp", l), o.clone())))
        with torch.no_grad(), torch_hooks(pairs):
            out = model(x)
        return out, rec

    ref_out, ref = record(ref_x)
    _, src = record(src_x)

    def embed_hook(m, i, o):
        o = ref["embed"].clone()
        for s in senders:
            if isinstance(s, Embed):
                p = _positions(s.positions, n_pos)
                o[:, p] = src["embed"][:, p]
        return o

    inputs = {}
    pairs = [(model.embed, "post", embed_hook)]
    for l, b in enumerate(blocks):
        def z_hook(m, i, o, l=l):
            z = ref[("z", l)].clone() if freeze else o.clone()
            for s in senders:
                if isinstance(s, Head) and s.layer == l:
                    p = _positions(s.positions, n_pos)
                    z[:, p, s.head] = src[("z", l)][:, p, s.head]
            return z

        def mlp_hook(m, i, o, l=l):
            out = ref[("mlp", l)].clone() if freeze else o.clone()
            for s in senders:
                if isinstance(s, MLP) and s.layer == l:
                    p = _positions(s.positions, n_pos)
                    out[:, p] = src[("mlp", l)][:, p]
            return out

        pairs += [(b.attn.hook_z, "post", z_hook), (b.mlp, "post", mlp_hook)]
        pairs.append((b, "pre", lambda m, i, l=l: inputs.__setitem__(("pre", l), i[0].clone())))
        pairs.append((b.ln2, "pre", lambda m, i, l=l: inputs.__setitem__(("mid", l), i[0].clone())))
    pairs.append((model.ln_final, "pre", lambda m, i: inputs.__setitem__("final", i[0].clone())))
    with torch.no_grad(), torch_hooks(pairs):
        model(ref_x)

    pairs = []
    for r in receivers:
        p = _positions(r.positions, n_pos)
        if isinstance(r, HeadInput):
            block = blocks[r.layer]
            w = getattr(block.attn, f"{r.kind}_proj")
            d_head = cfg.d_head
            rows = slice(r.head * d_head, (r.head + 1) * d_head)
            with torch.no_grad():  # the head's q/k/v from the recorded residual, by hand
                ln1 = (block.ln1.w, block.ln1.b, block.ln1.eps)
                normed = torch.nn.functional.layer_norm(inputs[("pre", r.layer)], (cfg.d_model,), *ln1)
                recomputed = normed @ w.weight[rows].T + w.bias[rows]

            def qkv_hook(m, i, o, head=r.head, p=p, recomputed=recomputed):
                o = o.clone()
                o[:, p, head] = recomputed[:, p]
                return o

            pairs.append((getattr(block.attn, f"hook_{r.kind}"), "post", qkv_hook))
        else:
            if isinstance(r, MLPInput):
                module, rec = blocks[r.layer].ln2, inputs[("mid", r.layer)]
            else:
                module, rec = model.ln_final, inputs["final"]

            def input_hook(m, i, p=p, rec=rec):
                x = i[0].clone()
                x[:, p] = rec[:, p]
                return (x,)

            pairs.append((module, "pre", input_hook))
    seen = {}
    pairs.append((model.ln_final, "pre", lambda m, i: seen.__setitem__("final", i[0])))
    with torch.no_grad(), torch_hooks(pairs):
        out = model(ref_x)
        ref_final = model(ref_x, return_type="resid")
    if metric.reads is None:
        return (metric(out) - metric(ref_out)).mean().item()
    assert metric.reads == f"blocks.{cfg.n_layers - 1}.hook_resid_post"
    return (metric(seen["final"]) - metric(ref_final)).mean().item()


def activation_patch(model, clean, corrupt, sender, metric=Logit(LABEL), direction="denoising", hold=None):
    """Plain activation patching of one sender (z of one head, mlp_out, or the embedding) with run_with_hooks;
    `hold`: a hook name kept at its value in the reference run meanwhile."""
    ref_x, src_x = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
    layer = getattr(sender, "layer", 0)
    name = {Head: f"blocks.{layer}.attn.hook_z", MLP: f"blocks.{layer}.hook_mlp_out", Embed: "hook_embed"}[type(sender)]
    with torch.no_grad():
        _, cache = model.run_with_cache(src_x, names_filter=name)
        p = _positions(sender.positions, model.cfg.n_pos)

        def patch(t, hook):
            t = t.clone()
            if isinstance(sender, Head):
                t[:, p, sender.head] = cache[name][:, p, sender.head]
            else:
                t[:, p] = cache[name][:, p]
            return t

        hooks = [(name, patch)]
        if hold is not None:
            _, held = model.run_with_cache(ref_x, names_filter=hold)
            hooks.append((hold, lambda t, hook: held[hold]))
        return (metric(model.run_with_hooks(ref_x, fwd_hooks=hooks)) - metric(model(ref_x))).mean().item()


# Proofs -------------------------------------------------------------------------------------------
PAIRS = [
    (Head(0, 1), HeadInput(2, 3, "q")), (Head(1, 2), HeadInput(2, 0, "k")), (Head(0, 3), HeadInput(1, 1, "v")),
    (Head(1, 0), MLPInput(1)), (MLP(0), HeadInput(1, 2, "v")), (MLP(1), MLPInput(2)), (Embed(), MLPInput(0)),
    (Embed(), HeadInput(0, 1, "k")), (Embed(), HeadInput(2, 2, "v")), (Head(2, 1), FinalResid()),
    (MLP(0), FinalResid()),
]  # fmt: skip


@pytest.mark.parametrize("sender, receiver", PAIRS, ids=lambda n: n.name)
def test_sweeps_equal_hand_written_three_pass_reference(small_model, pair, patcher, exact_matrix, sender, receiver):
    want = naive_path_patch(small_model, *pair, [sender], [receiver], direction=patcher.direction)
    assert abs(want) > 2e-5, f"the path must carry some effect for the comparison to mean anything ({want:.2e})"
    col = exact_matrix.receivers.index((receiver,))
    got = {
        "matrix": exact_matrix.score(sender, col),
        "senders_into": patcher.senders_into(receiver).score(sender),
        "receivers_of": patcher.receivers_of(sender).score(sender, receiver),
        "patch": patcher.patch(sender, receiver).item(),
    }
    for how, value in got.items():
        assert close(value, want), f"{how}: {value:.6e} vs reference {want:.6e} (diff {abs(value - want):.1e})"


@pytest.mark.parametrize(
    "senders, receivers",
    [
        ([Head(0, 2, positions=(0, 3, 9))], [FinalResid()]),
        ([Head(0, 2, positions=(33, 38, 50))], [HeadInput(1, 1, "v", positions=(0, 33, 38, 40))]),
        ([Head(0, 1), MLP(0), Head(1, 3)], [HeadInput(1, 2, "q"), MLPInput(2), FinalResid()]),
        ([Embed(positions=(0,)), MLP(1)], [HeadInput(2, 0, "v"), HeadInput(2, 0, "k"), MLPInput(1)]),
    ],
    ids=["positions-final", "positions-both", "sets-across-layers", "embed-cls-and-mlp"],
)
def test_sender_sets_receiver_groups_and_positions_equal_reference(small_model, pair, patcher, senders, receivers):
    want = naive_path_patch(small_model, *pair, senders, receivers, direction=patcher.direction)
    got = patcher.patch(senders, receivers).item()
    assert abs(want) > 2e-5
    assert close(got, want), f"{got:.6e} vs reference {want:.6e}"


@pytest.mark.parametrize("sender, receiver", [(Head(0, 1), HeadInput(2, 3, "q")), (MLP(0), MLPInput(2)),
                                              (Embed(), HeadInput(1, 0, "k")), (Head(1, 2), FinalResid())])
def test_nothing_frozen_equals_reference_without_freezing(small_model, pair, sender, receiver):
    pp = PathPatcher(small_model, *pair, Logit(LABEL), freeze=False)
    want = naive_path_patch(small_model, *pair, [sender], [receiver], freeze=False)
    assert abs(want) > 2e-5 and close(pp.patch(sender, receiver).item(), want)


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_nothing_frozen_into_final_resid_is_activation_patching(small_model, pair, direction):
    """With nothing frozen, the path into the final residual is the sender's total effect."""
    senders = [Embed(), Head(0, 0), Head(0, 3), Head(1, 2), MLP(0), MLP(1), Head(2, 1), Head(1, 1, positions=(0, 4))]
    sweep = path_patch_senders(small_model, *pair, FinalResid(), Logit(LABEL), senders=senders, freeze=False,
                               direction=direction, batch_size=3)  # fmt: skip
    for s in senders:
        want = activation_patch(small_model, *pair, s, direction=direction)
        assert close(sweep.score(s), want), f"{s.name}: {sweep.score(s):.6e} vs activation patching {want:.6e}"


def test_last_layer_sender_into_final_resid_is_activation_patching(small_model, pair, patcher):
    """The last MLP writes only to the final residual: its path patch is its activation patch. A head of the
    last block also feeds that block's MLP, so its direct path equals activation patching with that MLP held
    at its reference value, and differs from plain activation patching by the path through the MLP."""
    L, d = small_model.cfg.n_layers, patcher.direction
    last_mlp = f"blocks.{L - 1}.hook_mlp_out"
    sweep = patcher.senders_into(FinalResid(), senders="all")
    want = activation_patch(small_model, *pair, MLP(L - 1), direction=d)
    assert abs(want) > 1e-4 and close(sweep.score(MLP(L - 1)), want)
    for h in range(small_model.cfg.n_heads):
        direct = activation_patch(small_model, *pair, Head(L - 1, h), direction=d, hold=last_mlp)
        got = sweep.score(Head(L - 1, h))
        assert close(got, direct), f"L{L - 1}H{h}: {got:.6e} vs {direct:.6e}"
        total = activation_patch(small_model, *pair, Head(L - 1, h), direction=d)
        via_mlp = patcher.patch(Head(L - 1, h), MLPInput(L - 1)).item()
        assert abs(total - direct) > 1e-5 and abs(via_mlp) > 1e-5


def test_clean_equals_corrupt_gives_zero_everywhere(small_model, pair):
    x = pair[0]
    for freeze in (True, False):
        pp = PathPatcher(small_model, x, x.clone(), Logit(LABEL), freeze=freeze)
        m = pp.matrix()
        assert m.values.abs().max() < 1e-6, f"freeze={freeze}: max |effect| {m.values.abs().max():.2e}"
        group = [HeadInput(1, 0, "q"), MLPInput(2), FinalResid()]
        assert pp.senders_into(group).values.abs().max() < 1e-6


def test_unreachable_receivers_get_exactly_zero(small_model, pair, patcher, exact_matrix):
    unreachable = [(Head(1, 0), HeadInput(1, 2, "q")), (MLP(1), MLPInput(1)), (Head(2, 0), HeadInput(1, 0, "k")),
                   (MLP(1), HeadInput(1, 0, "v")), (MLP(2), MLPInput(0))]  # fmt: skip
    for s, r in unreachable:
        assert not reaches(s, r)
        assert exact_matrix.score(s, (r,)) == 0.0
        assert patcher.patch(s, r).item() == 0.0
        assert abs(naive_path_patch(small_model, *pair, [s], [r], direction=patcher.direction)) < 1e-6
    # and every unreachable pair of the whole matrix
    mask = torch.tensor([[not reaches(s, g[0]) for g in exact_matrix.receivers] for s in exact_matrix.senders])
    assert mask.sum() > 50 and exact_matrix.values[mask].abs().max() == 0


def test_direct_path_with_frozen_final_scale_is_the_change_in_direct_logit_attribution(small_model, pair):
    """Freeze ln_final's scale at the reference run's: the direct path of each head/MLP into the final
    residual equals (its DLA in the clean run) - (its DLA in the corrupt run), both with that scale."""
    clean, corrupt = pair
    B, L = clean.shape[0], small_model.cfg.n_layers
    with torch.no_grad():
        _, c = small_model.run_with_cache(clean, names_filter=lambda n: n.endswith(("hook_z", "hook_mlp_out")))
        names = lambda n: n.endswith(("hook_z", "hook_mlp_out", "ln_final.hook_scale"))  # noqa: E731
        _, r = small_model.run_with_cache(corrupt, names_filter=names)
    scale = r["ln_final.hook_scale"]

    def freeze(t, hook):
        return scale.repeat(t.shape[0] // B, 1, 1)

    with small_model.hooks([("ln_final.hook_scale", freeze)]):
        sweep = path_patch_senders(small_model, clean, corrupt, FinalResid(), Logit(LABEL), senders="all")
    w_u = small_model.W_U[:, LABEL] * small_model.ln_final.w

    def dla(write):  # [batch d_model] at CLS -> [batch]
        return ((write - write.mean(-1, keepdim=True)) / scale[:, 0]) @ w_u

    with torch.no_grad():
        heads = torch.zeros(L, small_model.cfg.n_heads)
        for l in range(L):
            for h in range(small_model.cfg.n_heads):
                w_o = small_model.W_O[l, h]
                z = f"blocks.{l}.attn.hook_z"
                heads[l, h] = (dla(c[z][:, 0, h] @ w_o) - dla(r[z][:, 0, h] @ w_o)).mean()
        out = [f"blocks.{l}.hook_mlp_out" for l in range(L)]
        mlps = torch.stack([(dla(c[name][:, 0]) - dla(r[name][:, 0])).mean() for name in out])
    assert max_diff(sweep.heads(), heads) < TOL, f"max diff {max_diff(sweep.heads(), heads):.2e}"
    assert max_diff(sweep.mlps(), mlps) < TOL
    assert heads.abs().max() > 1e-3


def test_metric_reading_the_final_residual(small_model, pair):
    clean, corrupt = pair
    with torch.no_grad():
        _, c = small_model.run_with_cache(clean, names_filter="blocks.2.hook_resid_post")
        _, r = small_model.run_with_cache(corrupt, names_filter="blocks.2.hook_resid_post")
    metric = SignalRecovery.from_caches(c, r, "blocks.2.hook_resid_post", positions=[0])
    pp = PathPatcher(small_model, clean, corrupt, metric)
    for s in [Head(1, 2), MLP(0), Head(2, 3)]:
        want = naive_path_patch(small_model, clean, corrupt, [s], [FinalResid()], metric=metric)
        assert abs(pp.patch(s, FinalResid()).item() - want) < 1e-3  # percent
    # signal recovery is additive over senders into the final residual (projection metric)
    sweep = pp.senders_into(FinalResid(), senders="all")
    total = pp.patch(all_senders(small_model.cfg), FinalResid()).item()
    assert abs(sweep.values.sum().item() - total) < 1e-3 and abs(total - 100) < 1e-3


def test_metric_upstream_of_the_receiver_sees_nothing(small_model, pair):
    clean, corrupt = pair
    with torch.no_grad():
        _, c = small_model.run_with_cache(clean, names_filter="blocks.1.hook_resid_post")
        _, r = small_model.run_with_cache(corrupt, names_filter="blocks.1.hook_resid_post")
    metric = SignalRecovery.from_caches(c, r, "blocks.1.hook_resid_post", positions=[0])
    pp = PathPatcher(small_model, clean, corrupt, metric)
    assert pp.patch(Head(0, 1), HeadInput(2, 0, "q")).item() == 0.0
    assert pp.patch(Head(0, 1), FinalResid()).item() == 0.0
    assert abs(pp.patch(Head(0, 1), MLPInput(1)).item()) > 1e-3


def test_batching_and_progress_do_not_change_results(small_model, pair, capsys):
    a = path_patch_senders(small_model, *pair, MLPInput(2), Logit(LABEL), batch_size=1)
    b = path_patch_senders(small_model, *pair, MLPInput(2), Logit(LABEL), batch_size=64, progress=True)
    assert max_diff(a.values, b.values) < 1e-6
    assert "path patching" in capsys.readouterr().err
    c = path_patch_receivers(small_model, *pair, Head(0, 2), Logit(LABEL), batch_size=4)
    d = path_patch_receivers(small_model, *pair, Head(0, 2), Logit(LABEL), batch_size=100)
    assert max_diff(c.values, d.values) < 1e-6


def test_maps_and_per_example_values(small_model, pair, patcher, exact_matrix):
    cfg = small_model.cfg
    sweep = patcher.senders_into(FinalResid())
    assert sweep.heads().shape == (cfg.n_layers, cfg.n_heads) and sweep.mlps().shape == (cfg.n_layers,)
    assert sweep.heads()[1, 2].item() == sweep.score(Head(1, 2))
    maps = patcher.receivers_of(Head(0, 1)).receiver_maps()
    assert set(maps) == {"q", "k", "v", "mlp", "final"}
    assert maps["k"].shape == (cfg.n_layers, cfg.n_heads) and maps["mlp"].shape == (cfg.n_layers,)
    assert (maps["q"][0] == 0).all() and maps["mlp"][0] != 0, "layer 0 heads are unreachable; MLP 0 is not"
    assert abs(maps["k"][2, 1].item() - exact_matrix.score(Head(0, 1), (HeadInput(2, 1, "k"),))) < 1e-6
    per_example = patcher.patch(Head(1, 1), MLPInput(2), reduce="none")
    assert per_example.shape == (2,)
    assert abs(per_example.mean().item() - patcher.patch(Head(1, 1), MLPInput(2)).item()) < 1e-7
    one = path_patch(small_model, pair[0][:1], pair[1][:1], Head(1, 1), MLPInput(2), Logit(LABEL),
                     direction=patcher.direction)  # fmt: skip
    assert abs(one.item() - per_example[0].item()) < 1e-6
    with pytest.raises(ValueError, match="every head"):
        patcher.senders_into(FinalResid(), senders=[Head(0, 0)]).heads()


def test_tidy_export(tmp_path, exact_matrix):
    records = exact_matrix.to_records()
    n_s, n_r = exact_matrix.values.shape
    assert len(records) == n_s * n_r
    row = next(r for r in records if r["sender"] == "L0H1" and r["receiver"] == "L2H3.q")
    assert row["score"] == exact_matrix.score(Head(0, 1), (HeadInput(2, 3, "q"),))
    fields = ("sender_layer", "sender_head", "receiver_layer", "receiver_head", "receiver_kind")
    assert tuple(row[f] for f in fields) == (0, 1, 2, 3, "q")
    exact_matrix.to_csv(tmp_path / "paths.csv")
    with open(tmp_path / "paths.csv") as f:
        back = list(csv.DictReader(f))
    assert len(back) == len(records) and float(back[7]["score"]) == pytest.approx(records[7]["score"])
    exact_matrix.to_json(tmp_path / "paths.json")
    assert json.loads((tmp_path / "paths.json").read_text()) == records


def test_node_lists_and_names(small_model):
    cfg = small_model.cfg
    assert len(all_senders(cfg)) == 1 + cfg.n_layers * (cfg.n_heads + 1)
    assert len(all_receivers(cfg)) == cfg.n_layers * (3 * cfg.n_heads + 1) + 1
    assert [n.name for n in (Head(3, 1), Head(3, 1, positions=[0, 4]), MLP(2), Embed(0), HeadInput(4, 2, "v"),
                             MLPInput(5), FinalResid(), FinalResid(None))] == [
        "L3H1", "L3H1@0,4", "MLP2", "Embed@0", "L4H2.v", "MLP5.in", "Final[CLS]", "Final"]  # fmt: skip
    assert Head(1, 2, positions=[3]) == Head(1, 2, positions=(3,)) == Head(1, 2, positions=3)


def test_bad_arguments_fail_before_compute(small_model, pair):
    clean, corrupt = pair
    with pytest.raises(ValueError, match="direction"):
        PathPatcher(small_model, clean, corrupt, Logit(0), direction="sideways")
    with pytest.raises((ValueError, TypeError), match="one shape|corrupt"):  # TypeError: jaxtyping, under pytest
        PathPatcher(small_model, clean, corrupt[:1], Logit(0))
    with pytest.raises(ValueError, match="kind must be"):
        HeadInput(1, 0, "z")
    pp = PathPatcher(small_model, clean[:1], corrupt[:1], Logit(0))
    for senders, receivers, match in [
        (Head(3, 0), FinalResid(), r"layer must be in \[0, 3\)"),
        (Head(0, 4), FinalResid(), r"head must be in \[0, 4\)"),
        (Head(0, 0, positions=[65]), FinalResid(), "positions"), (Head(0, 0), MLP(1), "receiver must be one of"),
        (HeadInput(1, 0, "q"), FinalResid(), "sender must be one of"), ([], FinalResid(), "at least one"),
    ]:  # fmt: skip
        with pytest.raises(ValueError, match=match):
            pp.patch(senders, receivers)
    with pytest.raises(ValueError, match="senders must be"):
        pp.senders_into(FinalResid(), senders="attention")
    with pytest.raises(ValueError, match="receivers must be"):
        pp.receivers_of(Head(0, 0), receivers="everything")
