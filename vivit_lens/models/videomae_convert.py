"""Checkpoint conversion between Hugging Face VideoMAE key schemes and vivit_lens: pure state-dict functions.

VideoMAE's keys are ViViT's with `videomae.` for `vivit.` (the prefix is optional: a bare
`VideoMAEModel` has none), the query and value biases stored as `attention.attention.q_bias` /
`v_bias` on disk (what published checkpoints and `save_pretrained` write) or as `query.bias` /
`value.bias` (transformers-5 in memory), no key bias, and `fc_norm` when the model mean-pools.

    lens_sd, unexpected = hf_to_lens(hf_sd)
    check_state_dict(lens_sd, model.state_dict(), unexpected)   # raises, listing every problem
    hf_sd = lens_to_hf(lens_sd)                                  # on-disk names, round trip exact
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from vivit_lens.models import convert as vivit_convert
from vivit_lens.models.videomae_config import videomae_processor_to_hf_dict

_FC_NORM = {"fc_norm.weight": "fc_norm.w", "fc_norm.bias": "fc_norm.b"}
_BIAS_ON_DISK = {"query.bias": "q_bias", "value.bias": "v_bias"}


def _lens_name(hf_key: str) -> str | None:
    if hf_key in _FC_NORM.values() or vivit_convert._lens_native(hf_key):
        return hf_key  # already a vivit_lens name
    if hf_key in _FC_NORM:
        return _FC_NORM[hf_key]
    key = hf_key.removeprefix("videomae.")
    if key.startswith(("vivit.", "embeddings.cls_token", "embeddings.position_embeddings")):
        return None  # ViViT's, not VideoMAE's
    m = re.fullmatch(r"(encoder\.layer\.\d+\.attention\.attention)\.([qv])_bias", key)
    if m:
        key = f"{m[1]}.{'query' if m[2] == 'q' else 'value'}.bias"
    return vivit_convert._lens_name(key)


def hf_to_lens(state: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename an HF VideoMAE state dict (either scheme, with or without `videomae.`) to vivit_lens names.

    Returns the converted dict and the keys that were not converted (named as in the checkpoint).
    """
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        name = _lens_name(key)
        if name is None:
            unexpected.append(key)
        elif name in out:
            unexpected.append(f"{key} (a second tensor for {name})")
        else:
            out[name] = tensor.T if name == "unembed.W_U" and name != key else tensor
    return out, unexpected


def lens_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """vivit_lens state dict -> HF VideoMAE on-disk names (`videomae.encoder.layer...`, `q_bias`, `fc_norm`...)."""
    back = {v: k for k, v in _FC_NORM.items()}
    out = {back[k]: v.contiguous() for k, v in state.items() if k in back}
    for key, tensor in vivit_convert.lens_to_hf({k: v for k, v in state.items() if k not in back}).items():
        key = re.sub(r"^vivit\.", "videomae.", key)
        key = re.sub(
            r"\.attention\.attention\.(query|value)\.bias$",
            lambda m: f".attention.attention.{_BIAS_ON_DISK[m[1] + '.bias']}",
            key,
        )
        out[key] = tensor
    return out


def save_folder(model, folder: str | Path, layout: str = "hf") -> None:
    """Write a HookedVideoMAE as an HF folder (`layout="hf"`: what transformers loads) or in vivit_lens layout
    (`"lens"`: vivit_lens.safetensors with TransformerLens-style names); config and preprocessor JSON in both."""
    if layout not in ("hf", "lens"):
        raise ValueError(f"layout must be 'hf' or 'lens', got {layout!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if layout == "hf":
        save_file(lens_to_hf(state), folder / "model.safetensors", metadata={"format": "pt"})
    else:
        save_file(state, folder / "vivit_lens.safetensors", metadata={"format": "vivit_lens"})
    cfg = model.cfg.to_hf_dict()
    cfg["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    processor = videomae_processor_to_hf_dict(model.processor)
    (folder / "preprocessor_config.json").write_text(json.dumps(processor, indent=2) + "\n")


__all__ = ["hf_to_lens", "lens_to_hf", "save_folder"]
