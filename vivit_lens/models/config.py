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
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

ACTIVATIONS = ("gelu_fast", "gelu_new", "gelu_pytorch_tanh", "gelu", "quick_gelu", "relu", "silu", "swish")


class ConfigError(ValueError):
    """A configuration that no ViViT can be built from."""


def _pair(value: int | list[int] | tuple[int, ...], name: str) -> tuple[int, int]:
    if _is_int(value) and value > 0:
        return (int(value), int(value))
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) and v > 0 for v in value):
        return (int(value[0]), int(value[1]))
    raise ConfigError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(name: str, v: Any) -> None:
    if not (_is_int(v) and v > 0):
        raise ConfigError(f"{name} must be a positive int, got {v!r}")


def _of_type(name: str, v: Any, kind: type, what: str) -> None:
    if not isinstance(v, kind):
        raise ConfigError(f"{name} must be {what}, got {v!r}")


def _read_json(path: str | Path) -> dict[str, Any]:
    """The object in a JSON file; a missing, unreadable, non-UTF-8 or non-object file is a ConfigError naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start]:#04x})") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{path}: expected a JSON object of fields, got a {type(d).__name__}")
    return d


def _in_file(path: str | Path, parse):
    """`parse()`, with any ConfigError it raises prefixed by the file it came from."""
    try:
        return parse()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def _check_fields(values: dict[str, Any]) -> None:
    """Type and range of each field present in `values` (cross-field checks are in ViViTConfig.__post_init__)."""
    v = values.get
    if "image_size" in values:
        _pair(v("image_size"), "image_size")
    t = v("tubelet_size", (1, 1, 1))
    if not (isinstance(t, (list, tuple)) and len(t) == 3 and all(_is_int(x) and x > 0 for x in t)):
        raise ConfigError(f"tubelet_size must be three positive ints (t, h, w), got {t!r}")
    for name in ("num_frames", "num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size"):  # fmt: skip
        if name in values:
            _positive_int(name, values[name])
    if v("head_dim") is not None:
        _positive_int("head_dim", values["head_dim"])
    if "hidden_act" in values and v("hidden_act") not in ACTIVATIONS:
        raise ConfigError(f"hidden_act {v('hidden_act')!r} is not supported; expected one of {ACTIVATIONS}")
    if "layer_norm_eps" in values and not (_is_number(v("layer_norm_eps")) and v("layer_norm_eps") > 0):
        raise ConfigError(f"layer_norm_eps must be a positive number, got {v('layer_norm_eps')!r}")
    if "qkv_bias" in values:
        _of_type("qkv_bias", v("qkv_bias"), bool, "true or false")
    if "initializer_range" in values and not _is_number(v("initializer_range")):
        raise ConfigError(f"initializer_range must be a number, got {v('initializer_range')!r}")


# A ViViT-B has 8.9e7 parameters, ViViT-H about 6.5e8: a config implying more than this is a typo, not a model.
MAX_PARAMETERS = 10**10


@dataclass(frozen=True)
class ViViTConfig:
    """Architecture of a ViViT video classifier (the fields of transformers' `VivitConfig`).

    Attribute names follow the HF config so that `config.json` maps one to one; the
    TransformerLens names (`d_model`, `n_layers`, `n_heads`, `d_head`, `d_mlp`, `n_classes`)
    are derived properties.
    """

    MODEL_TYPE: ClassVar[str] = "vivit"  # the HF config's model_type

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
        """Check every field for type and range (naming the field), before anything is built from it."""
        _check_fields(vars(self))
        object.__setattr__(self, "image_size", _pair(self.image_size, "image_size"))
        object.__setattr__(self, "tubelet_size", tuple(int(t) for t in self.tubelet_size))
        self._check_labels()
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
        if self.num_frames % t or h % ph or w % pw:
            warnings.warn(f"input {self.num_frames}x{h}x{w} is not a whole number of tubelets {self.tubelet_size}: "
                          "the remainder frames, rows and columns are seen by no token (as in transformers)",
                          stacklevel=3)  # fmt: skip
        n = self.n_parameters
        if n > MAX_PARAMETERS:
            raise ConfigError(f"this config implies {n:.3g} parameters ({n * 4 / 2**30:.3g} GiB in fp32), over the "
                              f"limit of {MAX_PARAMETERS:.0e}: check num_hidden_layers, hidden_size, "
                              "intermediate_size, image_size and num_frames")  # fmt: skip

    def _check_labels(self) -> None:
        if not isinstance(self.id2label, dict) or not self.id2label:
            raise ConfigError(f"id2label must be a non-empty mapping of class index to name, got {self.id2label!r}")
        try:
            labels = {int(k): str(v) for k, v in self.id2label.items()}
        except (TypeError, ValueError):
            raise ConfigError(f"id2label keys must be class indices, got {sorted(map(str, self.id2label))[:5]}") from None
        if sorted(labels) != list(range(len(labels))):
            raise ConfigError("id2label keys must be 0..n_classes-1")
        object.__setattr__(self, "id2label", labels)

    @property
    def n_parameters(self) -> int:
        """The parameter count this config implies (computed from the sizes, nothing is allocated)."""
        d, n_layers, d_attn = self.hidden_size, self.num_hidden_layers, self.n_heads * self.d_head
        t, ph, pw = self.tubelet_size
        embed = self.num_channels * t * ph * pw * d + d + d + self.n_pos * d
        attn = 3 * (d * d_attn + d_attn) + d_attn * d + d
        mlp = 2 * d * self.intermediate_size + self.intermediate_size + d
        return embed + n_layers * (attn + mlp + 4 * d) + 2 * d + (d + 1) * len(self.id2label)

    # TransformerLens vocabulary -------------------------------------------------------------
    @property
    def key_bias(self) -> bool:
        """Whether the key projection has a bias: with `qkv_bias` in ViViT (VideoMAE has none)."""
        return self.qkv_bias

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

    # What TransformerLens' generic tooling (patching, ActivationCache, get_act_name users) reads
    # from `model.cfg`, with TransformerLens' meanings. `device` and `dtype` are those of the model
    # this config belongs to: HookedViViT records them whenever it is moved or cast.
    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (TransformerLens `cfg.device`); CPU until the model is moved."""
        return self.__dict__.get("_device", torch.device("cpu"))

    @property
    def dtype(self) -> torch.dtype:
        """The model's parameter dtype (TransformerLens `cfg.dtype`)."""
        return self.__dict__.get("_dtype", torch.float32)

    def _record_placement(self, device: torch.device, dtype: torch.dtype) -> None:
        """Called by the model after `.to()`: the config is frozen for every architectural field."""
        object.__setattr__(self, "_device", torch.device(device))
        object.__setattr__(self, "_dtype", dtype)

    @property
    def n_ctx(self) -> int:
        """Sequence length, [CLS] included (TransformerLens: the context length)."""
        return self.n_pos

    @property
    def n_key_value_heads(self) -> None:
        """None: every head has its own keys and values (no grouped-query attention)."""
        return None

    @property
    def d_vocab(self) -> int:
        """Size of the logits' last axis. A video classifier has no token vocabulary: its classes."""
        return self.n_classes

    @property
    def d_vocab_out(self) -> int:
        return self.n_classes

    @property
    def act_fn(self) -> str:
        """The MLP activation under its TransformerLens name (`gelu_fast`, `gelu_new`, `gelu`, `relu`, `silu` ...)."""
        return {"gelu_pytorch_tanh": "gelu_pytorch_tanh", "swish": "silu"}.get(self.hidden_act, self.hidden_act)

    @property
    def eps(self) -> float:
        return self.layer_norm_eps

    @property
    def normalization_type(self) -> str:
        """Always "LN": LayerNorm with weight and bias, not folded into the next layer."""
        return "LN"

    @property
    def positional_embedding_type(self) -> str:
        """Always "standard": a learned position embedding added to the residual stream (`hook_pos_embed`)."""
        return "standard"

    @property
    def attn_only(self) -> bool:
        return False

    @property
    def parallel_attn_mlp(self) -> bool:
        return False

    @property
    def gated_mlp(self) -> bool:
        return False

    @property
    def final_rms(self) -> bool:
        return False

    @property
    def use_attn_scale(self) -> bool:
        return True

    @property
    def attn_scale(self) -> float:
        """Scores are divided by this: `sqrt(d_head)`."""
        return float(self.d_head) ** 0.5

    @property
    def use_attn_result(self) -> bool:
        """`blocks.{l}.attn.hook_result` exists (computed whenever it is hooked or cached)."""
        return True

    @property
    def use_split_qkv_input(self) -> bool:
        """`blocks.{l}.hook_{q,k,v}_input` exist (per-head copies of the residual, computed when hooked)."""
        return True

    @property
    def use_hook_mlp_in(self) -> bool:
        return True

    @property
    def use_attn_in(self) -> bool:
        return False

    @property
    def n_devices(self) -> int:
        return 1

    @property
    def model_name(self) -> str:
        return "vivit"

    @property
    def original_architecture(self) -> str:
        return "VivitForVideoClassification"

    @property
    def init_range(self) -> float:
        return self.initializer_range

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

    # The readout (what the classifier reads); `HookedViViT.readout` is `norm(mean over readout_positions)`.
    @property
    def readout_positions(self) -> tuple[int, ...]:
        """Positions of the final residual the classifier reads, averaged: [CLS], `(0,)`."""
        return (0,)

    @property
    def readout_norm_name(self) -> str:
        """The LayerNorm the readout applies to the mean of the residual over `readout_positions`."""
        return "ln_final"

    @property
    def readout_norm_eps(self) -> float:
        return self.layer_norm_eps

    @property
    def readout_norm_pooled(self) -> bool:
        """Whether the readout norm sees one vector per clip (its `hook_scale` is `[batch 1]`), not one per position."""
        return False

    # HF JSON ---------------------------------------------------------------------------------
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> ViViTConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of config fields, got a {type(d).__name__}")
        if d.get("model_type", cls.MODEL_TYPE) != cls.MODEL_TYPE:
            raise ConfigError(f"expected a config with model_type {cls.MODEL_TYPE!r}, got {d.get('model_type')!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in cls._our_fields(d).items() if k in names and v is not None}
        _check_fields(kwargs)  # before the constructor sees them
        for name in ("layer_norm_eps", "initializer_range"):
            if name in kwargs:
                kwargs[name] = float(kwargs[name])
        if "id2label" not in kwargs and "num_labels" in d:
            _positive_int("num_labels", d["num_labels"])
            kwargs["id2label"] = {i: f"LABEL_{i}" for i in range(d["num_labels"])}
        return cls(**kwargs)

    @classmethod
    def _our_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        """An HF config dict with the architecture's fields in our meanings (ViViT's are HF's as they are)."""
        return d

    @classmethod
    def from_json(cls, path: str | Path) -> ViViTConfig:
        """Read an HF `config.json`; every error names the file and the field."""
        d = _read_json(path)
        return _in_file(path, lambda: cls.from_hf_dict(d))

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
        if not isinstance(d, dict):
            raise ConfigError(f"expected a mapping of processor fields, got a {type(d).__name__}")
        kwargs: dict[str, Any] = {}
        for name in ("do_resize", "do_center_crop", "do_rescale", "offset", "do_normalize"):
            if d.get(name) is not None:
                _of_type(name, d[name], bool, "true or false")
                kwargs[name] = d[name]
        if d.get("resample") is not None:
            if not (_is_int(d["resample"]) and 0 <= d["resample"] <= 5):
                raise ConfigError(f"resample must be a PIL resampling code 0..5, got {d['resample']!r}")
            kwargs["resample"] = d["resample"]
        if d.get("rescale_factor") is not None:
            if not (_is_number(d["rescale_factor"]) and d["rescale_factor"] > 0):
                raise ConfigError(f"rescale_factor must be a positive number, got {d['rescale_factor']!r}")
            kwargs["rescale_factor"] = d["rescale_factor"]
        size = d.get("size")
        if isinstance(size, dict):
            if "shortest_edge" not in size:
                raise ConfigError(f"only size={{'shortest_edge': n}} is supported, got size={size!r}")
            _positive_int("size.shortest_edge", size["shortest_edge"])
            kwargs["shortest_edge"] = size["shortest_edge"]
        elif size is not None:
            _positive_int("size", size)
            kwargs["shortest_edge"] = size
        crop = d.get("crop_size")
        if isinstance(crop, dict):
            if not {"height", "width"} <= set(crop):
                raise ConfigError(f"crop_size must have height and width, got {crop!r}")
            kwargs["crop_size"] = _pair([crop["height"], crop["width"]], "crop_size")
        elif crop is not None:
            kwargs["crop_size"] = _pair(crop, "crop_size")
        for name in ("image_mean", "image_std"):
            if d.get(name) is not None:
                v = d[name] if isinstance(d[name], (list, tuple)) else [d[name]] * 3
                if not (v and all(_is_number(x) for x in v)):
                    raise ConfigError(f"{name} must be a number or a list of numbers, got {d[name]!r}")
                if name == "image_std" and any(x <= 0 for x in v):
                    raise ConfigError(f"image_std must be positive, got {d[name]!r}")
                kwargs[name] = tuple(float(x) for x in v)
        return cls(**kwargs)

    @classmethod
    def from_json(cls, path: str | Path) -> ProcessorConfig:
        """Read an HF `preprocessor_config.json`; every error names the file and the field."""
        d = _read_json(path)
        return _in_file(path, lambda: cls.from_hf_dict(d))

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
