"""Small randomly initialised transformers VideoMAE classifiers: the reference for the VideoMAE tests."""

from __future__ import annotations

import torch

from tests.conftest import randomize_

SMALL_VIDEOMAE = {
    "image_size": 32,
    "patch_size": 8,
    "num_frames": 8,
    "tubelet_size": 2,
    "hidden_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "intermediate_size": 96,
    "num_labels": 7,
}


def make_hf_videomae(seed: int = 0, attn: str = "sdpa", **overrides):
    """A random `VideoMAEForVideoClassification` (eval mode) with SMALL_VIDEOMAE's config updated by `overrides`.

    Every parameter is random (HF zero-inits biases and sets LayerNorm weights to one), `fc_norm`'s and the
    final LayerNorm's weights around 1, so that each of them changes the result.
    """
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    cfg = VideoMAEConfig(**{**SMALL_VIDEOMAE, **overrides}, attn_implementation=attn)
    torch.manual_seed(seed)
    model = randomize_(VideoMAEForVideoClassification(cfg), seed)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_pooled(hf, x: torch.Tensor) -> torch.Tensor:
    """What transformers' classifier reads, computed from its own modules (its forward does not return it)."""
    seq = hf.videomae(x).last_hidden_state
    return hf.fc_norm(seq.mean(1)) if hf.fc_norm is not None else seq[:, 0]
