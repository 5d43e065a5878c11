"""HookedViViT computes what transformers' ViViT computes: logits, every residual, every attention pattern."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import make_hf, max_diff, pixels
from vivit_lens import HookedViViT

CONFIGS = {
    "small": {},
    "tubelet_1x4x4": dict(tubelet_size=[1, 4, 4], num_frames=3, image_size=16),
    "tubelet_4x8x16_nonsquare": dict(tubelet_size=[4, 8, 16], num_frames=12, image_size=[24, 48]),
    "heads_6_no_qkv_bias": dict(hidden_size=48, num_attention_heads=6, qkv_bias=False),
    "heads_1": dict(hidden_size=16, num_attention_heads=1, intermediate_size=40),
    "gelu_exact": dict(hidden_act="gelu"),
    "gelu_new_eps": dict(hidden_act="gelu_new", layer_norm_eps=1e-12),
    "eps_1e-3_one_layer": dict(layer_norm_eps=1e-3, num_hidden_layers=1, num_labels=1),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_matches_hf_logits_residuals_and_patterns(name, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hf = make_hf(seed=len(name), attn="eager", **CONFIGS[name])
    hf.save_pretrained(tmp_path)
    model = HookedViViT.from_pretrained(tmp_path)
    x = pixels(hf.config, batch=2, seed=3)
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True, output_attentions=True)
        logits, cache = model.run_with_cache(
            x, names_filter=lambda n: n.endswith(("hook_resid_pre", "hook_resid_post", "hook_pattern"))
        )
        plain = model(x)
    assert max_diff(logits, ref.logits) < 1e-5, f"{name}: logits max abs diff {max_diff(logits, ref.logits):.2e}"
    assert max_diff(plain, ref.logits) < 1e-5, f"{name}: plain logits max abs diff {max_diff(plain, ref.logits):.2e}"
    n = model.cfg.n_layers
    assert len(ref.hidden_states) == n + 1 and len(ref.attentions) == n
    for layer in range(n):
        for got, want, what in (
            (cache[f"blocks.{layer}.hook_resid_pre"], ref.hidden_states[layer], "resid_pre"),
            (cache[f"blocks.{layer}.hook_resid_post"], ref.hidden_states[layer + 1], "resid_post"),
            (cache[f"blocks.{layer}.attn.hook_pattern"], ref.attentions[layer], "pattern"),
        ):
            d = max_diff(got, want)
            assert d < 1e-5, f"{name}: layer {layer} {what} max abs diff {d:.2e}"


def test_sdpa_and_eager_reference_agree_with_us(small_hf, small_model):
    """Our fused path against HF's default (sdpa) path, batch of 3."""
    x = pixels(small_hf.config, batch=3, seed=7)
    with torch.no_grad():
        d = max_diff(small_model(x), small_hf(x).logits)
    assert d < 1e-5, f"max abs diff {d:.2e}"


@pytest.mark.slow
def test_full_size_vivit_b_architecture(tmp_path, monkeypatch, capsys):
    """The exact google/vivit-b-16x2-kinetics400 architecture (400 classes, 32x224x224), random weights."""
    from transformers import VivitConfig, VivitForVideoClassification

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    hf = VivitForVideoClassification(VivitConfig(num_labels=400)).eval()
    with torch.no_grad():
        hf.vivit.embeddings.cls_token.normal_()
        hf.vivit.embeddings.position_embeddings.normal_()
    assert sum(p.numel() for p in hf.parameters()) == 88_954_000
    hf.save_pretrained(tmp_path)
    model = HookedViViT.from_pretrained(tmp_path)
    assert sum(p.numel() for p in model.parameters()) == 88_954_000
    assert model.cfg.grid_shape == (16, 14, 14) and model.cfg.n_pos == 3137
    x = pixels(hf.config, batch=1, seed=0)
    with torch.no_grad():
        out = hf(x, output_hidden_states=True)
        ref, want = out.hidden_states, out.logits
        del hf, out
        logits, cache = model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_resid_post"))
    d = max_diff(logits, want)
    worst_resid = max(max_diff(cache[f"blocks.{i}.hook_resid_post"], ref[i + 1]) for i in range(12))
    with capsys.disabled():
        print(f"\n[full-size ViViT-B] logits max abs diff vs HF: {d:.3e}; worst resid_post diff: {worst_resid:.3e}")
    assert d < 1e-4, f"logits max abs diff {d:.2e}"
    assert worst_resid < 1e-3, f"resid_post max abs diff {worst_resid:.2e}"
