"""Ablations against hand-written hooks (ours and on the HF model), the stated mean/resample/noise
semantics, pixel masking, and the paper's Table 1 layout."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import max_diff, pixels
from vivit_lens.ablation import Ablation, ablate, mask_pixels, topk_table

REGION = [18, 19, 22, 23, 34, 35, 38, 39]  # 2x2 patches in tubelet times 1 and 2


@pytest.fixture(scope="module")
def x(small_model):
    return pixels(small_model.cfg, batch=2, seed=31)


def capture_after(model, x, ablations, hook):
    """The activation at `hook` as the rest of the model sees it (a hook registered after the ablation)."""
    seen = {}
    hooks = [h for a in ablations for h in a.fwd_hooks()] + [(hook, lambda t, hook: seen.__setitem__("t", t.clone()))]
    with torch.no_grad():
        model.run_with_hooks(x, fwd_hooks=hooks)
    return seen["t"]


def test_zero_ablation_of_tokens_equals_a_hand_written_hook(small_model, x):
    def by_hand(t, hook):
        t[:, REGION] = 0
        return t

    for hook in ("blocks.0.hook_resid_pre", "blocks.1.hook_attn_out", "blocks.1.mlp.hook_post"):
        with torch.no_grad():
            ref = small_model.run_with_hooks(x, fwd_hooks=[(hook, by_hand)])
        ours = ablate(small_model, x, Ablation.zero(hook, positions=REGION))
        assert torch.equal(ours, ref), f"{hook}: {max_diff(ours, ref):.2e}"
        assert max_diff(ours, small_model(x)) > 1e-4


def test_head_and_mlp_zero_ablation_match_the_hf_model(small_hf, small_model, x):
    d_head, layer, head = small_model.cfg.d_head, 1, 2

    def zero_head(module, args):
        z = args[0].clone()
        z[..., head * d_head:(head + 1) * d_head] = 0
        return (z,)

    with torch.no_grad():
        handle = small_hf.vivit.layers[layer].attention.o_proj.register_forward_pre_hook(zero_head)
        ref_head = small_hf(x).logits
        handle.remove()
        handle = small_hf.vivit.layers[2].mlp.register_forward_hook(lambda m, i, out: torch.zeros_like(out))
        ref_mlp = small_hf(x).logits
        handle.remove()
    ours_head = ablate(small_model, x, Ablation.zero(f"blocks.{layer}.attn.hook_z", heads=head))
    ours_mlp = ablate(small_model, x, Ablation.zero("blocks.2.hook_mlp_out"))
    assert max_diff(ours_head, ref_head) < 1e-5 and max_diff(ours_mlp, ref_mlp) < 1e-5
    both = ablate(small_model, x, [Ablation.zero(f"blocks.{layer}.attn.hook_z", heads=head),
                                   Ablation.zero("blocks.2.hook_mlp_out")])  # fmt: skip
    assert max_diff(both, ours_head) > 1e-4 and max_diff(both, ours_mlp) > 1e-4


def test_mean_ablation_semantics(small_model, x):
    hook = "blocks.1.hook_resid_mid"
    reference = pixels(small_model.cfg, batch=3, seed=32)
    with torch.no_grad():
        _, ref_cache = small_model.run_with_cache(reference, names_filter=hook)
        _, own = small_model.run_with_cache(x, names_filter=hook)
    ref_acts, own = ref_cache[hook], own[hook]
    others = [p for p in range(small_model.cfg.n_pos) if p not in REGION]
    # Per position: the mean over the reference clips, position by position.
    seen = capture_after(small_model, x, [Ablation.mean(hook, ref_cache, positions=REGION)], hook)
    assert max_diff(seen[:, REGION], ref_acts[:, REGION].mean(0).expand(2, -1, -1)) < 1e-6
    assert torch.equal(seen[:, others], own[:, others])
    # Over tokens: one vector, the mean over the reference clips and their tubelet tokens.
    seen = capture_after(small_model, x, [Ablation.mean(hook, ref_acts, positions=REGION, over="tokens")], hook)
    assert max_diff(seen[:, REGION], ref_acts[:, 1:].mean((0, 1)).expand(2, len(REGION), -1)) < 1e-6
    # No reference: each clip's own mean over its tubelet tokens.
    seen = capture_after(small_model, x, [Ablation.mean(hook, positions=REGION)], hook)
    assert max_diff(seen[:, REGION], own[:, 1:].mean(1, keepdim=True).expand(-1, len(REGION), -1)) < 1e-6
    with pytest.raises(ValueError, match="over"):
        Ablation.mean(hook, ref_acts, over="everything")


def test_resample_ablation_semantics(small_model, x):
    hook = "blocks.2.attn.hook_z"
    other = pixels(small_model.cfg, batch=2, seed=33)
    with torch.no_grad():
        _, src = small_model.run_with_cache(other, names_filter=hook)
        _, own = small_model.run_with_cache(x, names_filter=hook)
    src, own = src[hook], own[hook]
    seen = capture_after(small_model, x, [Ablation.resample(hook, src, heads=[1, 3])], hook)
    assert torch.equal(seen[:, :, [1, 3]], src[:, :, [1, 3]]), "row i takes row i of a same-size batch"
    assert torch.equal(seen[:, :, [0, 2]], own[:, :, [0, 2]])
    seen = capture_after(small_model, x, [Ablation.resample(hook, src[1:], positions=[0])], hook)
    assert torch.equal(seen[:, 0], src[1, 0].expand(2, -1, -1)), "one source row is broadcast"
    three = torch.cat([src, src[:1] * 2])
    a = capture_after(small_model, x, [Ablation.resample(hook, three, seed=4)], hook)
    b = capture_after(small_model, x, [Ablation.resample(hook, three, seed=4)], hook)
    assert torch.equal(a, b) and all(any(torch.equal(a[i], three[j]) for j in range(3)) for i in range(2))


def test_noise_ablation_semantics(small_model, x):
    hook = "blocks.0.hook_resid_pre"
    with torch.no_grad():
        _, own = small_model.run_with_cache(x, names_filter=hook)
    own = own[hook]
    abl = Ablation.noise(hook, std=0.5, positions=range(1, 65), seed=7)
    seen = capture_after(small_model, x, [abl], hook)
    noise = seen - own
    assert torch.equal(noise[:, 0], torch.zeros_like(noise[:, 0])), "[CLS] untouched"
    assert abs(float(noise[:, 1:].std()) - 0.5) < 0.02 and abs(float(noise[:, 1:].mean())) < 0.02
    assert torch.equal(capture_after(small_model, x, [abl], hook), seen), "the same seed gives the same noise"
    with pytest.raises(ValueError, match="std > 0"):
        Ablation.noise(hook, std=0)


def test_mask_pixels_changes_exactly_the_tokens_under_the_box(small_model, x):
    cfg = small_model.cfg
    _, h_n, w_n = cfg.grid_shape
    masked = mask_pixels(x, frames=[2, 3], box=(0, 8, 12, 16), value=0.0)  # (x0, y0, x1, y1)
    assert (masked[:, 2:4, :, 8:16, 0:12] == 0).all()
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[:, 2:4, :, 8:16, 0:12] = False
    assert torch.equal(masked[keep], x[keep])
    with torch.no_grad():
        _, a = small_model.run_with_cache(x, names_filter="hook_embed")
        _, b = small_model.run_with_cache(masked, names_filter="hook_embed")
    changed = ((a["hook_embed"] - b["hook_embed"]).abs().amax((0, 2)) > 0).nonzero().reshape(-1).tolist()
    # Tubelet time 1 (frames 2-3), rows 8-15 -> patch row 1, columns 0-11 -> patch columns 0 and 1.
    assert changed == [1 + 1 * h_n * w_n + 1 * w_n + c for c in (0, 1)]
    assert changed == small_model.grid.positions(frames=[2, 3], box=(0, 8, 12, 16)).tolist()
    mean = mask_pixels(x, box=(0, 0, 8, 8), value="mean")
    assert max_diff(mean[0, :, :, 0, 0], x[0].mean(dim=(0, 2, 3)).expand(cfg.num_frames, -1)) < 1e-6
    with pytest.raises(ValueError, match="outside"):
        mask_pixels(x, box=(0, 0, 8, 40))


def test_topk_table_reproduces_the_paper_layout():
    before = torch.zeros(400)
    after = torch.zeros(400)
    for c, b, a in ((31, 16.6881, 16.8257), (357, 8.55, 8.4932), (84, 6.1969, 6.1552), (45, 6.1204, 6.1848),
                    (227, 6.0944, 6.0417), (101, 5.889, 5.912)):  # fmt: skip
        before[c], after[c] = b, a
    table = topk_table(before, after[None], k=6)
    rows = table.to_records()
    assert [r["label"] for r in rows] == ["LABEL 31", "LABEL 357", "LABEL 84", "LABEL 45", "LABEL 227", "LABEL 101"]
    assert rows[0]["change"] == pytest.approx(0.1376, abs=1e-4) and rows[1]["change"] == pytest.approx(-0.0568, abs=1e-4)
    assert [r["ablated_rank"] for r in rows] == [1, 2, 4, 3, 5, 6], "45 overtakes 84 after the ablation"
    assert rows[2]["ablated_top_label"] == "LABEL 45"
    text = str(table)
    assert "| 1 | LABEL 31 (16.6881) | LABEL 31 (16.8257) | +0.1376 | 1 |" in text
    named = topk_table(before, after, labels={i: f"class{i}" for i in range(400)}, k=1)
    assert named.rows[0]["label"] == "class31"
