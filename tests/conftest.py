"""Shared fixtures: small randomly initialised transformers ViViT models, the reference for every test."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)

SMALL = dict(
    image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=48, num_hidden_layers=3,
    num_attention_heads=4, intermediate_size=96, num_labels=7,
)  # fmt: skip


def randomize_(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give every parameter random values (HF zero-inits cls_token, position embeddings, biases, LN bias).

    Weights keep a scale at which activations stay O(1), so the comparison is meaningful.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim >= 2 and "embeddings" not in name.split(".")[-1]:
                fan_in = p[0].numel()
                p.copy_(noise / fan_in**0.5)
            else:
                p.copy_(0.5 * noise)
    return model


def make_hf(seed: int = 0, attn: str = "sdpa", **overrides):
    """A random `VivitForVideoClassification` (eval mode) with SMALL's config updated by `overrides`."""
    from transformers import VivitConfig, VivitForVideoClassification

    cfg = VivitConfig(**{**SMALL, **overrides}, attn_implementation=attn)
    torch.manual_seed(seed)
    model = VivitForVideoClassification(cfg)
    return randomize_(model, seed).eval()


def pixels(cfg, batch: int = 2, seed: int = 1) -> torch.Tensor:
    """Random pixel values in the model's input layout and the processor's [-3, 1] range."""
    g = torch.Generator().manual_seed(seed)
    h, w = cfg.image_size if isinstance(cfg.image_size, (list, tuple)) else (cfg.image_size, cfg.image_size)
    return torch.rand(batch, cfg.num_frames, cfg.num_channels, h, w, generator=g) * 4 - 3


@pytest.fixture(scope="session")
def small_hf():
    return make_hf()


@pytest.fixture(scope="session")
def small_folder(tmp_path_factory, small_hf):
    folder = tmp_path_factory.mktemp("small_ckpt")
    small_hf.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def small_model(small_folder):
    from vivit_lens import HookedViViT

    return HookedViViT.from_pretrained(small_folder)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Counts calls of the fused attention kernel in the model's components: `sdpa_calls["n"]`."""
    import vivit_lens.components as comp

    calls = {"n": 0}
    real = comp.F.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(comp.F, "scaled_dot_product_attention", counting)
    return calls


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()
