"""Model and preprocessing configuration, read from (and written back to) Hugging Face JSON.

`ViViTConfig` holds every architectural field of a transformers `VivitConfig`; nothing in the
package is hard-coded to 224 pixels, 32 frames, 768 dimensions or 12 layers.

    cfg = ViViTConfig.from_hf_dict(json.load(open("config.json")))
    cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.grid_shape    # (12, 12, 64, (16, 14, 14))
    json.dump(cfg.to_hf_dict(), open("config.json", "w"))
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVATIONS = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh", "gelu", "quick_gelu", "relu", "silu", "swish")


class ConfigError(ValueError):
    """A configuration that no ViViT can be built from."""


def _pair(value: int | list[int] | tuple[int, ...], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{name} must be an int or a pair of ints, got {value!r}")


@dataclass(frozen=True)
class ViViTConfig:
    """Architecture of a ViViT video classifier (the fields of transformers' `VivitConfig`).

    Attribute names follow the HF config so that `config.json` maps one to one; the
    TransformerLens names (`d_model`, `n_layers`, `n_heads`, `d_head`, `d_mlp`, `n_classes`)
    are derived properties.
    """

    image_size: int | tuple[int, int] | list[int] = (224, 224)  # stored as (height, width)
    num_frames: int = 32
    tubelet_size: tuple[int, int, int] | list[int] = (2, 16, 16)  # stored as (time, height, width)
    num_channels: int = 3
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    head_dim: int | None = None
    intermediate_size: int = 3072
    hidden_act: str = "gelu_fast"
    layer_norm_eps: float = 1e-6
    qkv_bias: bool = True
    id2label: dict[int, str] | dict[str, str] = field(default_factory=lambda: {0: "LABEL_0", 1: "LABEL_1"})
    initializer_range: float = 0.02

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        tubelet = tuple(int(t) for t in self.tubelet_size)
        if len(tubelet) != 3 or min(tubelet) < 1:
            raise ConfigError(f"tubelet_size must be three positive ints (t, h, w), got {self.tubelet_size!r}")
        object.__setattr__(self, "tubelet_size", tubelet)
        object.__setattr__(self, "id2label", {int(k): str(v) for k, v in self.id2label.items()})
        if self.hidden_act not in ACTIVATIONS:
            raise ConfigError(f"hidden_act {self.hidden_act!r} is not supported; expected one of {ACTIVATIONS}")
        if self.head_dim is None and self.hidden_size % self.num_attention_heads:
            raise ConfigError(
                f"hidden_size {self.hidden_size} is not divisible by num_attention_heads {self.num_attention_heads}"
            )
        t, ph, pw = self.tubelet_size
        h, w = self.image_size
        # Conv3d with stride = kernel drops a remainder (HF does the same); a grid of no tokens is no model.
        if self.num_frames // t < 1 or h // ph < 1 or w // pw < 1:
            raise ConfigError(
                f"input {self.num_frames}x{h}x{w} is smaller than one tubelet {self.tubelet_size}"
            )
        if sorted(self.id2label) != list(range(len(self.id2label))):
            raise ConfigError("id2label keys must be 0..n_classes-1")

    # TransformerLens vocabulary -------------------------------------------------------------
    @property
    def d_model(self) -> int:
        return self.hidden_size

    @property
    def n_layers(self) -> int:
        return self.num_hidden_layers

    @property
    def n_heads(self) -> int:
        return self.num_attention_heads

    @property
    def d_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_attention_heads

    @property
    def d_mlp(self) -> int:
        return self.intermediate_size

    @property
    def n_classes(self) -> int:
        return len(self.id2label)

    @property
    def label2id(self) -> dict[str, int]:
        return {v: k for k, v in self.id2label.items()}

    # Token grid ------------------------------------------------------------------------------
    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """(tubelet times, rows, cols) of the token grid: (16, 14, 14) for ViViT-B."""
        t, ph, pw = self.tubelet_size
        return (self.num_frames // t, self.image_size[0] // ph, self.image_size[1] // pw)

    @property
    def n_tubelets(self) -> int:
        t, h, w = self.grid_shape
        return t * h * w

    @property
    def n_pos(self) -> int:
        """Sequence length: tubelets + the [CLS] token at position 0."""
        return self.n_tubelets + 1

    # HF JSON ---------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ViViTConfig:
        if d.get("model_type", "vivit") != "vivit":
            raise ConfigError(f"expected a config with model_type 'vivit', got {d.get('model_type')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in names and v is not None}
        if "id2label" not in kwargs and "num_labels" in d:
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(int(d["num_labels"]))}
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> ViViTConfig:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_hf_dict(d)

    def to_hf_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = dataclasses.asdict(self)
        d["image_size"] = self.image_size[0] if self.image_size[0] == self.image_size[1] else list(self.image_size)
        d["tubelet_size"] = list(self.tubelet_size)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        d["label2id"] = self.label2id
        if self.head_dim is None:
            del d["head_dim"]
        d.update(model_type="vivit", architectures=["VivitForVideoClassification"])
        return d


@dataclass(frozen=True)
class ProcessorConfig:
    """The preprocessing chain of transformers' `VivitImageProcessor` (its defaults shown).

    Resize the shortest edge to `shortest_edge` (PIL resample code `resample`), centre-crop to
    `crop_size` (height, width), then `x * rescale_factor - 1` when `offset`, else
    `x * rescale_factor`, then `(x - mean) / std`. With these defaults black maps to -3, white to 1.
    """

    do_resize: bool = True
    shortest_edge: int = 256
    resample: int = 2
    do_center_crop: bool = True
    crop_size: tuple[int, int] = (224, 224)  # (height, width)
    do_rescale: bool = True
    rescale_factor: float = 1 / 127.5
    offset: bool = True
    do_normalize: bool = True
    image_mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    image_std: tuple[float, ...] = (0.5, 0.5, 0.5)

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ProcessorConfig:
        kwargs: dict[str, Any] = {}
        for name in ("do_resize", "resample", "do_center_crop", "do_rescale", "rescale_factor", "offset",
                     "do_normalize"):
            if name in d and d[name] is not None:
                kwargs[name] = d[name]
        size = d.get("size")
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ConfigError(f"only size={{'shortest_edge': n}} is supported, got size={size!r}")
            kwargs["shortest_edge"] = int(size["shortest_edge"])
        elif isinstance(size, int):
            kwargs["shortest_edge"] = size
        crop = d.get("crop_size")
        if isinstance(crop, dict):
            kwargs["crop_size"] = (int(crop["height"]), int(crop["width"]))
        elif crop is not None:
            kwargs["crop_size"] = _pair(crop, "crop_size")
        for name in ("image_mean", "image_std"):
            if d.get(name) is not None:
                v = d[name]
                kwargs[name] = tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v] * 3))
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> ProcessorConfig:
        return cls.from_hf_dict(json.loads(Path(path).read_text()))

    def to_hf_dict(self) -> dict[str, Any]:
        return {
            "image_processor_type": "VivitImageProcessor",
            "do_resize": self.do_resize,
            "size": {"shortest_edge": self.shortest_edge},
            "resample": self.resample,
            "do_center_crop": self.do_center_crop,
            "crop_size": {"height": self.crop_size[0], "width": self.crop_size[1]},
            "do_rescale": self.do_rescale,
            "rescale_factor": self.rescale_factor,
            "offset": self.offset,
            "do_normalize": self.do_normalize,
            "image_mean": list(self.image_mean),
            "image_std": list(self.image_std),
        }
