"""Activation patching against independent references: a hand-written hook on the HF model, plain
one-forward-per-patch loops, and the identities any patching must satisfy."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from tests.conftest import max_diff, pixels
from vivit_lens.metrics import Logit, LogitDiff, SignalRecovery, final_resid_hook
from vivit_lens.patching import (
    Patch,
    PatchResult,
    frame_groups,
    get_act_patch_attn_head_all_pos_every,
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_head_out_by_pos,
    get_act_patch_attn_head_pattern_all_pos,
    get_act_patch_attn_head_pattern_by_pos,
    get_act_patch_attn_head_q_all_pos,
    get_act_patch_attn_head_v_by_pos,
    get_act_patch_block_every,
    get_act_patch_mlp_out,
    get_act_patch_resid_pre,
    patch_sweep,
    run_patches,
    site_mask,
)

LABEL, OTHER = 3, 5


@pytest.fixture(scope="module")
def pair(small_model):
    """A clean/corrupt pair that differs in a local region of the later frames (like the paper's pair)."""
    clean = pixels(small_model.cfg, batch=1, seed=21)
    corrupt = clean.clone()
    corrupt[:, 4:, :, 8:24, 8:24] = pixels(small_model.cfg, batch=1, seed=22)[:, 4:, :, 8:24, 8:24]
    with torch.no_grad():
        clean_logits, clean_cache = small_model.run_with_cache(clean)
        corrupt_logits, corrupt_cache = small_model.run_with_cache(corrupt)
    return clean, corrupt, clean_logits, corrupt_logits, clean_cache, corrupt_cache


@pytest.fixture(scope="module")
def recovery(small_model, pair):
    *_, clean_cache, corrupt_cache = pair
    return SignalRecovery.from_caches(clean_cache, corrupt_cache, final_resid_hook(small_model))


def naive(model, x, source_cache, sites, metric):
    """The plain way: one full forward from pixels per patched run, a hook that overwrites the slice in place."""
    hooks, store = [], {}
    for hook, index in sites:
        def fn(t, hook, index=index, src=source_cache[hook]):
            t = t.clone()
            t[index] = src[index]
            return t
        hooks.append((hook, fn))
    if getattr(metric, "reads", None) is not None:
        hooks.append((metric.reads, lambda t, hook: store.__setitem__("act", t)))
    with torch.no_grad():
        out = model.run_with_hooks(x, fwd_hooks=hooks)
    return metric(store.get("act", out))[0]


def test_head_patching_matches_hand_written_hook_on_hf(small_hf, small_model, pair):
    """Independent reference: HF's model, head h's slice of o_proj's input replaced by the clean run's."""
    clean, corrupt, *_, clean_cache, _ = pair
    cfg, d_head = small_model.cfg, small_model.cfg.d_head
    clean_inputs = {}

    def keep(layer):
        def pre_hook(module, args):
            clean_inputs[layer] = args[0].detach().clone()
        return pre_hook

    with torch.no_grad():
        handles = [small_hf.vivit.layers[l].attention.o_proj.register_forward_pre_hook(keep(l)) for l in range(cfg.n_layers)]
        small_hf(clean)
        for h in handles:
            h.remove()
        ref = torch.empty(cfg.n_layers, cfg.n_heads)
        ref_diff = torch.empty(cfg.n_layers, cfg.n_heads)
        for l in range(cfg.n_layers):
            for head in range(cfg.n_heads):
                def patch(module, args, l=l, head=head):
                    x = args[0].clone()
                    x[..., head * d_head:(head + 1) * d_head] = clean_inputs[l][..., head * d_head:(head + 1) * d_head]
                    return (x,)
                handle = small_hf.vivit.layers[l].attention.o_proj.register_forward_pre_hook(patch)
                logits = small_hf(corrupt).logits
                handle.remove()
                ref[l, head] = logits[0, LABEL]
                ref_diff[l, head] = logits[0, LABEL] - logits[0, OTHER]
    ours = get_act_patch_attn_head_out_all_pos(small_model, corrupt, clean_cache, Logit(LABEL), progress=False)
    ours_diff = get_act_patch_attn_head_out_all_pos(small_model, corrupt, clean_cache, LogitDiff(LABEL, OTHER),
                                                    progress=False, batch_size=5)  # fmt: skip
    assert ours.shape == (cfg.n_layers, cfg.n_heads)
    assert max_diff(ours, ref) < 1e-5, f"max abs diff {max_diff(ours, ref):.2e}"
    assert max_diff(ours_diff, ref_diff) < 1e-5, f"max abs diff {max_diff(ours_diff, ref_diff):.2e}"
    assert (ref - ref.mean()).abs().max() > 1e-3, "the patches must differ for the comparison to mean anything"


def test_head_patching_signal_recovery_matches_hf_hidden_state(small_hf, small_model, pair, recovery):
    """The paper's metric by hand on HF's last hidden state (before the final LayerNorm) at [CLS]."""
    clean, corrupt, *_, clean_cache, _ = pair
    d_head, layer = small_model.cfg.d_head, 1
    with torch.no_grad():
        r_clean = small_hf(clean, output_hidden_states=True).hidden_states[-1][0, 0].double()
        r_corrupt = small_hf(corrupt, output_hidden_states=True).hidden_states[-1][0, 0].double()
        z_clean = clean_cache[f"blocks.{layer}.attn.hook_z"].flatten(2)
        ref = []
        for head in range(small_model.cfg.n_heads):
            def patch(module, args, head=head):
                x = args[0].clone()
                x[..., head * d_head:(head + 1) * d_head] = z_clean[..., head * d_head:(head + 1) * d_head]
                return (x,)
            handle = small_hf.vivit.layers[layer].attention.o_proj.register_forward_pre_hook(patch)
            r = small_hf(corrupt, output_hidden_states=True).hidden_states[-1][0, 0].double()
            handle.remove()
            delta = r_clean - r_corrupt
            ref.append(100 * ((r - r_corrupt) @ delta) / (delta @ delta))
    ours = get_act_patch_attn_head_out_all_pos(small_model, corrupt, clean_cache, recovery, layers=[layer],
                                               progress=False)  # fmt: skip
    assert max_diff(ours[0], torch.stack(ref)) < 1e-3  # percent: float32 rounding of a difference of residuals


def test_nothing_patched_gives_the_corrupt_metric(small_model, pair, recovery):
    _, corrupt, _, corrupt_logits, clean_cache, _ = pair
    nothing = [Patch(f"blocks.{l}.hook_resid_pre", positions=()) for l in range(3)]
    nothing += [Patch("hook_embed", positions=()), Patch("blocks.1.attn.hook_z", heads=())]
    values = run_patches(small_model, corrupt, clean_cache, nothing, Logit(LABEL), progress=False)
    assert max_diff(values, corrupt_logits[0, LABEL].expand(len(nothing))) < 1e-6
    values = run_patches(small_model, corrupt, clean_cache, nothing, recovery, progress=False)
    assert values.abs().max() < 1e-3, "0% of the signal when nothing is patched"


def test_resid_pre_everywhere_at_layer_0_recovers_the_clean_run(small_model, pair, recovery):
    clean, corrupt, clean_logits, *_ , clean_cache, _ = pair
    all_pos = get_act_patch_resid_pre(small_model, corrupt, clean_cache, recovery, positions="all", progress=False)
    assert all_pos.shape == (3,)
    assert max_diff(all_pos, torch.full((3,), 100.0)) < 1e-3, "patching the whole residual at any layer = 100%"
    logit = run_patches(small_model, corrupt, clean_cache, [Patch("blocks.0.hook_resid_pre")], Logit(LABEL),
                        progress=False)  # fmt: skip
    assert max_diff(logit, clean_logits[:, LABEL]) < 1e-6
    noised = patch_sweep(small_model, clean, corrupt, recovery, "resid_pre", layers=0, direction="noising",
                         progress=False)  # fmt: skip
    assert abs(float(noised.values[0])) < 1e-3, "noising the whole residual gives the corrupt run: 0%"


def test_patching_at_layer_l_leaves_everything_before_l_unchanged(small_model, pair):
    _, corrupt, *_, clean_cache, corrupt_cache = pair
    for layer in (1, 2):
        # A metric reading a residual before the patch: exactly the corrupt run's value.
        early = SignalRecovery.from_caches(clean_cache, corrupt_cache, f"blocks.{layer - 1}.hook_resid_post",
                                           positions=[0, 7, 40])  # fmt: skip
        patches = [Patch(f"blocks.{layer}.hook_attn_out"), Patch(f"blocks.{layer}.attn.hook_z", heads=1),
                   Patch(f"blocks.{layer}.hook_resid_pre")]  # fmt: skip
        with torch.no_grad():
            unpatched = early(small_model.run_with_cache(corrupt, names_filter=early.reads)[1][early.reads])
        values = run_patches(small_model, corrupt, clean_cache, patches, early, progress=False)
        assert torch.equal(values, unpatched.expand(3)) and values.abs().max() < 1e-3
        # What the patched runs see at the patched layer's input: the corrupt residual, bit for bit.
        seen = []
        with small_model.hooks([(f"blocks.{layer}.hook_resid_pre", lambda t, hook, seen=seen: seen.append(t.clone()))]):
            run_patches(small_model, corrupt, clean_cache, patches[:2], Logit(LABEL), progress=False)
        with torch.no_grad():  # the residual as the plain forward computes it (a full cache takes explicit paths)
            ref = small_model(corrupt, stop_at_layer=layer)
        assert seen and all(torch.equal(s, ref.expand_as(s)) for s in seen)
        assert max_diff(ref, corrupt_cache[f"blocks.{layer}.hook_resid_pre"]) < 1e-5


@pytest.mark.parametrize("metric_name", ["logit", "recovery"])
def test_batched_equals_looped_equals_naive(small_model, pair, recovery, metric_name):
    _, corrupt, *_, clean_cache, _ = pair
    metric = Logit(LABEL) if metric_name == "logit" else recovery
    patches = [Patch.at(f"blocks.{l}.attn.hook_z", heads=h) for l in range(3) for h in range(4)]
    patches += [Patch.at(f"blocks.{l}.hook_mlp_out", positions=[0, 5, 9]) for l in range(3)]
    patches += [(Patch.at("blocks.0.attn.hook_v", heads=2), Patch.at("blocks.2.hook_resid_mid", positions=range(10)))]
    batched = run_patches(small_model, corrupt, clean_cache, patches, metric, batch_size=16, progress=False)
    looped = run_patches(small_model, corrupt, clean_cache, patches, metric, batch_size=1, progress=False)
    plain = run_patches(small_model, corrupt, clean_cache, patches, metric, batch_size=7, progress=False, fast=False)
    ref = []
    for run in patches:
        run = (run,) if isinstance(run, Patch) else run
        sites = []
        for p in run:
            head = slice(None) if p.heads is None else list(p.heads)
            pos = slice(None) if p.positions is None else list(p.positions)
            sites.append((p.hook, (slice(None), pos, head) if p.heads is not None else (slice(None), pos)))
        ref.append(naive(small_model, corrupt, clean_cache, sites, metric))
    ref = torch.stack(ref)
    tol = 1e-6 if metric_name == "logit" else 1e-4  # percent of a residual difference: float32 rounding x 100
    assert max_diff(batched, looped) < tol, f"batched vs looped {max_diff(batched, looped):.2e}"
    assert max_diff(plain, ref) < tol, f"plain engine vs naive {max_diff(plain, ref):.2e}"
    assert max_diff(batched, ref) < tol, f"fast batched engine vs naive {max_diff(batched, ref):.2e}"


def test_q_k_v_and_pattern_patching_match_naive(small_model, pair):
    # logits of order 1 in float32: a few ulp (1 ulp = 2.4e-7 at 2.66) between two computation orders
    tol = 2e-6
    _, corrupt, *_, clean_cache, _ = pair
    metric = LogitDiff(LABEL, OTHER)
    q = get_act_patch_attn_head_q_all_pos(small_model, corrupt, clean_cache, metric, progress=False)
    pattern = get_act_patch_attn_head_pattern_all_pos(small_model, corrupt, clean_cache, metric, progress=False)
    for l in range(3):
        for h in range(4):
            ref_q = naive(small_model, corrupt, clean_cache, [(f"blocks.{l}.attn.hook_q", (slice(None), slice(None), h))], metric)
            ref_p = naive(small_model, corrupt, clean_cache, [(f"blocks.{l}.attn.hook_pattern", (slice(None), h))], metric)
            assert abs(float(q[l, h] - ref_q)) < tol
            assert abs(float(pattern[l, h] - ref_p)) < tol
    v_pos = get_act_patch_attn_head_v_by_pos(small_model, corrupt, clean_cache, metric, positions={"cls": [0], "t3": frame_groups(small_model)["t3"]}, layers=[2], progress=False)
    ref = naive(small_model, corrupt, clean_cache, [("blocks.2.attn.hook_v", (slice(None), [0], 1))], metric)
    assert v_pos.shape == (1, 2, 4) and abs(float(v_pos[0, 0, 1] - ref)) < tol
    p_pos = get_act_patch_attn_head_pattern_by_pos(small_model, corrupt, clean_cache, metric, positions=[[0], [3, 4]],
                                                   layers=[1], progress=False)  # fmt: skip
    ref = naive(small_model, corrupt, clean_cache, [("blocks.1.attn.hook_pattern", (slice(None), 2, [3, 4]))], metric)
    assert p_pos.shape == (1, 4, 2) and abs(float(p_pos[0, 2, 1] - ref)) < tol, "pattern axes are [layer head dest_pos]"


def test_by_position_and_frame_groups(small_model, pair, recovery):
    clean, corrupt, *_, clean_cache, _ = pair
    cfg = small_model.cfg
    t_n, h_n, w_n = cfg.grid_shape
    groups = frame_groups(small_model, include_cls=True)
    assert list(groups) == ["cls"] + [f"t{t}" for t in range(t_n)]
    for t in range(t_n):  # pos = 1 + t*H*W + h*W + w, by hand
        assert groups[f"t{t}"].tolist() == [1 + t * h_n * w_n + h * w_n + w for h in range(h_n) for w in range(w_n)]
    by_frame = patch_sweep(small_model, clean, corrupt, recovery, "mlp_out", positions="frames", progress=False)
    assert by_frame.axes == ("layer", "frame") and by_frame.shape == (3, t_n)
    for l in range(3):
        for t in range(t_n):
            ref = naive(small_model, corrupt, clean_cache, [(f"blocks.{l}.hook_mlp_out", (slice(None), groups[f"t{t}"]))], recovery)
            assert abs(float(by_frame.values[l, t] - ref)) < 1e-3  # percent; its own clean run (fused path)
    per_pos = get_act_patch_mlp_out(small_model, corrupt, clean_cache, recovery, layers=[2], progress=False)
    assert per_pos.shape == (1, cfg.n_pos)
    head_pos = get_act_patch_attn_head_out_by_pos(small_model, corrupt, clean_cache, recovery, positions="frames",
                                                  layers=[0], progress=False)  # fmt: skip
    assert head_pos.shape == (1, t_n, 4)
    # At the embedding, only the tokens of frames that differ (frames 4-7: tubelet times 2-3) carry any signal.
    embed = get_act_patch_resid_pre(small_model, corrupt, clean_cache, recovery, positions=groups, layers=[0],
                                    progress=False)  # fmt: skip
    assert embed.shape == (1, 1 + t_n)
    assert embed[0, :3].abs().max() < 1e-3 < embed[0, 3:].abs().min()


def test_noising_mirrors_denoising(small_model, pair, recovery):
    clean, corrupt, clean_logits, corrupt_logits, _, corrupt_cache = pair
    res = patch_sweep(small_model, clean, corrupt, Logit(LABEL), "z", heads="each", direction="noising", progress=False)
    swapped = get_act_patch_attn_head_out_all_pos(small_model, clean, corrupt_cache, Logit(LABEL), progress=False)
    assert max_diff(res.values, swapped) < 1e-6, "noising = the TransformerLens call with inputs and caches swapped"
    assert res.meta["clean_metric"] == pytest.approx(float(clean_logits[0, LABEL]), abs=1e-6)
    assert res.meta["corrupt_metric"] == pytest.approx(float(corrupt_logits[0, LABEL]), abs=1e-6)
    ref = naive(small_model, clean, corrupt_cache, [("blocks.1.attn.hook_z", (slice(None), slice(None), 2))], Logit(LABEL))
    assert abs(float(res.values[1, 2] - ref)) < 1e-6
    den = patch_sweep(small_model, clean, corrupt, recovery, "resid_pre", positions="all", progress=False)
    noi = patch_sweep(small_model, clean, corrupt, recovery, "resid_pre", positions="all", direction="noising",
                      progress=False)  # fmt: skip
    assert max_diff(den.values, torch.full((3,), 100.0)) < 1e-3 and noi.values.abs().max() < 1e-3


def test_tl_style_callable_metric_and_every_helpers(small_model, pair):
    _, corrupt, *_, clean_cache, _ = pair

    def logit_fn(logits):  # TransformerLens style: a scalar from [batch, n_classes]
        return logits[:, LABEL].mean()

    a = get_act_patch_attn_head_out_all_pos(small_model, corrupt, clean_cache, logit_fn, progress=False)
    b = get_act_patch_attn_head_out_all_pos(small_model, corrupt, clean_cache, Logit(LABEL), progress=False)
    assert max_diff(a, b) < 1e-6
    every = get_act_patch_attn_head_all_pos_every(small_model, corrupt, clean_cache, Logit(LABEL), progress=False)
    assert every.shape == (5, 3, 4) and torch.equal(every[0], b)
    block = get_act_patch_block_every(small_model, corrupt, clean_cache, Logit(LABEL), layers=[0], positions="cls",
                                      progress=False)  # fmt: skip
    assert block.shape == (3, 1)


def test_patch_result_exports(small_model, pair, recovery, tmp_path):
    clean, corrupt, *_ = pair
    res = patch_sweep(small_model, clean, corrupt, recovery, "z", heads="each", progress=False)
    assert isinstance(res, PatchResult) and res.axes == ("layer", "head") and res.labels == ((0, 1, 2), (0, 1, 2, 3))
    records = res.to_records()
    assert len(records) == 12 and records[5] == {"layer": 1, "head": 1, "metric": pytest.approx(float(res.values[1, 1]))}
    res.to_csv(tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[5]["layer"] == "1" and float(rows[5]["metric"]) == pytest.approx(float(res.values[1, 1]))
    res.to_json(tmp_path / "r.json")
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["meta"]["direction"] == "denoising" and len(data["records"]) == 12
    text = repr(res)
    assert "layer=3 x head=4" in text and "SignalRecovery" in text


def test_errors_are_clear(small_model, pair):
    clean, corrupt, *_, clean_cache, _ = pair
    two = {"blocks.0.hook_resid_pre": clean_cache["resid_pre", 0].repeat(2, 1, 1)}
    with pytest.raises(ValueError, match=r"3 clip\(s\) like the patched input"):  # batches: as in TransformerLens
        get_act_patch_resid_pre(small_model, torch.cat([corrupt] * 3), two, Logit(0), layers=[0], progress=False)
    with pytest.raises(KeyError, match="source cache has no"):
        get_act_patch_attn_head_out_all_pos(small_model, corrupt, {"blocks.0.attn.hook_z": clean_cache["z", 0]},
                                            Logit(0), progress=False)  # fmt: skip
    with pytest.raises(ValueError, match="per-head activation"):
        patch_sweep(small_model, clean, corrupt, Logit(0), "resid_pre", heads="each", progress=False)
    with pytest.raises(ValueError, match="direction"):
        patch_sweep(small_model, clean, corrupt, Logit(0), "z", direction="sideways", progress=False)
    with pytest.raises(ValueError, match="out of range"):
        run_patches(small_model, corrupt, clean_cache, [Patch("blocks.0.attn.hook_z", heads=(9,))], Logit(0), progress=False)
    with pytest.raises(ValueError, match=r"layers \[7\] out of range"):
        patch_sweep(small_model, clean, corrupt, Logit(0), "z", layers=[1, 7], progress=False)


def test_site_mask_selects_exactly():
    m = site_mask((1, 5, 3, 2), "batch pos head d_head", (1, 3), (2,))
    assert m.shape == (5, 3, 1) and m.sum() == 2 and m[1, 2, 0] and m[3, 2, 0]
    m = site_mask((1, 3, 5, 5), "batch head query_pos key_pos", (0,), None)
    assert m.shape == (3, 5, 1) and m.sum() == 3 and m[:, 0].all()
    assert site_mask((1, 5, 4), "batch pos d_model", (), None).sum() == 0
