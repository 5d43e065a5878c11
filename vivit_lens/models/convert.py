"""Checkpoint conversion between Hugging Face ViViT key schemes and vivit_lens: pure state-dict functions.

Two HF schemes are read: the names on disk (what published checkpoints and `save_pretrained`
write: `vivit.encoder.layer.{i}.attention.attention.query.weight` ...) and the transformers-5
in-memory names (`vivit.layers.{i}.attention.q_proj.weight` ...). vivit_lens's own names pass through.

    lens_sd, unexpected = hf_to_lens(hf_sd, cfg)
    check_state_dict(lens_sd, model.state_dict(), unexpected)   # raises, listing every problem
    hf_sd = lens_to_hf(lens_sd)                                  # on-disk names, round trip exact
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from safetensors.torch import save_file
from torch import Tensor

from vivit_lens.models.config import ViViTConfig


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: lists missing, unexpected and wrong-shape keys."""


# HF (either scheme, without the `vivit.` prefix) -> vivit_lens. `{i}` is the layer.
_BLOCK_RULES: list[tuple[str, str]] = [
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.(weight|bias)", "blocks.{i}.ln1.{p}"),
    (r"(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.(weight|bias)", "blocks.{i}.ln2.{p}"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.query\.(weight|bias)", "blocks.{i}.attn.q_proj.{p}"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.key\.(weight|bias)", "blocks.{i}.attn.k_proj.{p}"),
    (r"encoder\.layer\.(\d+)\.attention\.attention\.value\.(weight|bias)", "blocks.{i}.attn.v_proj.{p}"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", "blocks.{i}.attn.o_proj.{p}"),
    (r"layers\.(\d+)\.attention\.([qkvo])_proj\.(weight|bias)", "blocks.{i}.attn.{x}_proj.{p}"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", "blocks.{i}.mlp.fc1.{p}"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", "blocks.{i}.mlp.fc2.{p}"),
    (r"layers\.(\d+)\.mlp\.(fc[12])\.(weight|bias)", "blocks.{i}.mlp.{x}.{p}"),
]
_FIXED: dict[str, str] = {
    "embeddings.cls_token": "embed.cls_token",
    "embeddings.position_embeddings": "pos_embed.W_pos",
    "embeddings.patch_embeddings.projection.weight": "embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "embed.proj.bias",
    "layernorm.weight": "ln_final.w",
    "layernorm.bias": "ln_final.b",
    "classifier.weight": "unembed.W_U",
    "classifier.bias": "unembed.b_U",
}
# Tensors a checkpoint may hold that the classifier does not use (VivitModel's pooler).
IGNORED = re.compile(r"^(vivit\.)?pooler\.dense\.(weight|bias)$")
_LN = {"weight": "w", "bias": "b"}


def _lens_name(hf_key: str) -> str | None:
    key = hf_key.removeprefix("vivit.")
    if key in _FIXED:
        return _FIXED[key]
    for pattern, template in _BLOCK_RULES:
        m = re.fullmatch(pattern, key)
        if m:
            groups = m.groups()
            i, p = groups[0], groups[-1]
            x = groups[1] if len(groups) == 3 else ""
            name = template.format(i=i, x=x, p=p)
            return re.sub(r"\.ln([12])\.(weight|bias)$", lambda g: f".ln{g[1]}.{_LN[g[2]]}", name)
    return None


def _lens_native(key: str) -> bool:
    return bool(
        re.fullmatch(r"(embed\.(cls_token|proj\.(weight|bias))|pos_embed\.W_pos|ln_final\.[wb]|unembed\.(W_U|b_U))", key)
        or re.fullmatch(r"blocks\.\d+\.(ln[12]\.[wb]|attn\.[qkvo]_proj\.(weight|bias)|mlp\.fc[12]\.(weight|bias))", key)
    )


def hf_to_lens(state: dict[str, Tensor], cfg: ViViTConfig) -> tuple[dict[str, Tensor], list[str]]:
    """Rename (and reshape) an HF ViViT state dict to vivit_lens names.

    Returns the converted dict and the keys that were neither converted nor known to be unused.
    Keys already in vivit_lens names are kept as they are.
    """
    out: dict[str, Tensor] = {}
    unexpected: list[str] = []
    for key, tensor in state.items():
        if IGNORED.match(key):
            continue
        name = key if _lens_native(key) else _lens_name(key)
        if name is None:
            unexpected.append(key)
            continue
        if name in out:
            unexpected.append(f"{key} (a second tensor for {name})")
            continue
        if name == "pos_embed.W_pos" and tensor.ndim == 3:
            tensor = tensor[0]
        elif name == "unembed.W_U" and not _lens_native(key):
            tensor = tensor.T
        out[name] = tensor
    return out, unexpected


def check_state_dict(converted: dict[str, Tensor], expected: dict[str, Tensor], unexpected: list[str]) -> None:
    """Raise `CheckpointError` listing every missing, unexpected and wrong-shape key (nothing is loaded)."""
    missing = [k for k in expected if k not in converted]
    unexpected = unexpected + [k for k in converted if k not in expected]
    wrong = [
        f"{k}: checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if items:
                shown = "\n    ".join(items[:20]) + (f"\n    ... and {len(items) - 20} more" if len(items) > 20 else "")
                parts.append(f"  {title} ({len(items)}):\n    {shown}")
        raise CheckpointError("checkpoint does not match the model config:\n" + "\n".join(parts))


def lens_to_hf(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """vivit_lens state dict -> HF on-disk names (`vivit.encoder.layer...`, `classifier...`)."""
    fixed_back = {v: k for k, v in _FIXED.items()}
    block_back = {
        "ln1.w": "layernorm_before.weight", "ln1.b": "layernorm_before.bias",
        "ln2.w": "layernorm_after.weight", "ln2.b": "layernorm_after.bias",
        "attn.q_proj": "attention.attention.query", "attn.k_proj": "attention.attention.key",
        "attn.v_proj": "attention.attention.value", "attn.o_proj": "attention.output.dense",
        "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense",
    }  # fmt: skip
    out: dict[str, Tensor] = {}
    for key, tensor in state.items():
        if key in fixed_back:
            hf = fixed_back[key]
            if key == "pos_embed.W_pos":
                tensor = tensor[None]
            elif key == "unembed.W_U":
                tensor = tensor.T
        else:
            m = re.fullmatch(r"blocks\.(\d+)\.(ln[12]\.[wb]|attn\.[qkvo]_proj|mlp\.fc[12])(\.weight|\.bias)?", key)
            if m is None:
                raise CheckpointError(f"{key!r} is not a vivit_lens parameter name")
            hf = f"encoder.layer.{m[1]}.{block_back[m[2]]}{m[3] or ''}"
        out[hf if hf.startswith("classifier") else f"vivit.{hf}"] = tensor.contiguous()
    return out


def save_hf_folder(model, folder: str | Path) -> None:
    """Write `model` as an HF ViViT folder: config.json, model.safetensors, preprocessor_config.json."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_file(lens_to_hf(state), folder / "model.safetensors", metadata={"format": "pt"})
    cfg = model.cfg.to_hf_dict()
    cfg["dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(model.processor.to_hf_dict(), indent=2) + "\n")


def save_lens_folder(model, folder: str | Path) -> None:
    """Write `model` in vivit_lens layout: config.json and vivit_lens.safetensors (TransformerLens-style names)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, folder / "vivit_lens.safetensors", metadata={"format": "vivit_lens"})
    (folder / "config.json").write_text(json.dumps(model.cfg.to_hf_dict(), indent=2) + "\n")
    (folder / "preprocessor_config.json").write_text(json.dumps(model.processor.to_hf_dict(), indent=2) + "\n")


__all__ = ["CheckpointError", "hf_to_lens", "lens_to_hf", "check_state_dict", "save_hf_folder", "save_lens_folder"]
