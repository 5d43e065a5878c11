"""One entry point for every architecture: the model class is picked from the checkpoint's `model_type`.

model = vivit_lens.from_pretrained("MCG-NJU/videomae-base-finetuned-kinetics")   # HookedVideoMAE
model = vivit_lens.from_pretrained("google/vivit-b-16x2-kinetics400")            # HookedViViT
save_folder(model, "out", layout="lens")                                        # either layout, any model
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from vivit_lens.models.config import ConfigError, ViViTConfig, _read_json


def _architectures() -> dict[str, tuple[type, Callable[[Any, Path, str], None]]]:
    """model_type -> (model class, writer of a folder in layout 'hf' or 'lens')."""
    from vivit_lens.models import convert, videomae_convert
    from vivit_lens.models.vivit import HookedViViT
    from vivit_lens.models.videomae import HookedVideoMAE

    def save_vivit(model, folder: Path, layout: str) -> None:
        (convert.save_hf_folder if layout == "hf" else convert.save_lens_folder)(model, folder)

    return {"vivit": (HookedViViT, save_vivit), "videomae": (HookedVideoMAE, videomae_convert.save_folder)}


def known_model_types() -> tuple[str, ...]:
    return tuple(_architectures())


def config_from_hf_dict(d: dict[str, Any]) -> ViViTConfig:
    """The config of the architecture `d["model_type"]` names (a dict without one is a ViViT's, as before)."""
    from vivit_lens.models.videomae_config import VideoMAEConfig

    classes = {c.MODEL_TYPE: c for c in (ViViTConfig, VideoMAEConfig)}
    model_type = d.get("model_type", ViViTConfig.MODEL_TYPE) if isinstance(d, dict) else None
    if model_type not in classes:
        raise ConfigError(f"model_type {model_type!r} is not one vivit_lens knows ({', '.join(map(repr, classes))})")
    return classes[model_type].from_hf_dict(d)


def model_class(config_path: str | Path) -> type:
    """The Hooked* class for the `model_type` in a config.json; a ConfigError naming the known types otherwise."""
    model_type = _read_json(config_path).get("model_type")
    archs = _architectures()
    if model_type not in archs:
        got = "no model_type" if model_type is None else f"model_type {model_type!r}"
        raise ConfigError(f"{config_path}: {got}; vivit_lens knows {', '.join(map(repr, archs))}")
    return archs[model_type][0]


def from_pretrained(name_or_path: str | Path, **kwargs: Any):
    """Load any supported checkpoint (local folder or hub id); keyword arguments go to the class's `from_pretrained`
    (`revision`, `cache_dir`, `device`, `dtype`)."""
    from vivit_lens.models import loading

    files = loading.resolve(name_or_path, revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir"))
    return model_class(files.config).from_pretrained(name_or_path, **kwargs)


def save_folder(model, folder: str | Path, layout: str = "hf") -> None:
    """Write `model` as an HF folder (`"hf"`, what transformers loads) or in vivit_lens layout (`"lens"`)."""
    if layout not in ("hf", "lens"):
        raise ValueError(f"layout must be 'hf' or 'lens', got {layout!r}")
    archs = _architectures()
    name = model.cfg.model_name
    if name not in archs:
        raise ConfigError(f"no writer for model_type {name!r}; vivit_lens knows {', '.join(map(repr, archs))}")
    archs[name][1](model, Path(folder), layout)
