"""VideoMAE configuration and preprocessing defaults, read from (and written back to) Hugging Face JSON.

`VideoMAEConfig` is a `ViViTConfig` with VideoMAE's fields and meanings: the token grid, the
TransformerLens vocabulary and every check are shared; what differs is stated here.

    cfg = VideoMAEConfig.from_json("config.json")        # model_type "videomae"
    cfg.tubelet_size, cfg.n_pos, cfg.use_mean_pooling    # (2, 16, 16), 1568 (no [CLS]), True
    processor = videomae_processor(json.load(open("preprocessor_config.json")))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from vivit_lens.models.config import ConfigError, ProcessorConfig, ViViTConfig, _in_file, _is_int, _of_type, _pair, _read_json

# transformers' VideoMAEImageProcessor class defaults (IMAGENET_STANDARD_MEAN/STD are 0.5). Published
# checkpoints override the mean and std with ImageNet's (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225).
VIDEOMAE_PROCESSOR = ProcessorConfig(shortest_edge=224, crop_size=(224, 224), rescale_factor=1 / 255, offset=False)

# preprocessor_config.json key -> ProcessorConfig field; VideoMAE has no `offset`.
_PROCESSOR_KEYS = {
    "do_resize": "do_resize",
    "size": "shortest_edge",
    "resample": "resample",
    "do_center_crop": "do_center_crop",
    "crop_size": "crop_size",
    "do_rescale": "do_rescale",
    "rescale_factor": "rescale_factor",
    "do_normalize": "do_normalize",
    "image_mean": "image_mean",
    "image_std": "image_std",
}


def videomae_processor(d: dict[str, Any] | None = None, crop_size: tuple[int, int] | None = None) -> ProcessorConfig:
    """The preprocessing of `VideoMAEImageProcessor` configured by `d` (a preprocessor_config.json object):
    resize the shortest edge (default 224), centre-crop (224x224, or `crop_size`), rescale by 1/255, normalise."""
    base = VIDEOMAE_PROCESSOR if crop_size is None else dataclasses.replace(VIDEOMAE_PROCESSOR, crop_size=crop_size)
    if d is None:
        return base
    if not isinstance(d, dict):
        raise ConfigError(f"expected a mapping of processor fields, got a {type(d).__name__}")
    known = {k: v for k, v in d.items() if k in _PROCESSOR_KEYS and v is not None}
    parsed = ProcessorConfig.from_hf_dict(known)  # every field checked there, with the same messages
    return dataclasses.replace(base, **{_PROCESSOR_KEYS[k]: getattr(parsed, _PROCESSOR_KEYS[k]) for k in known})


def videomae_processor_from_json(path: str | Path, crop_size: tuple[int, int] | None = None) -> ProcessorConfig:
    d = _read_json(path)
    return _in_file(path, lambda: videomae_processor(d, crop_size))


def videomae_processor_to_hf_dict(processor: ProcessorConfig) -> dict[str, Any]:
    """The `preprocessor_config.json` object transformers' `VideoMAEImageProcessor` reads."""
    if processor.offset:
        raise ConfigError("VideoMAEImageProcessor has no offset; this processor config uses one (a ViViT processor?)")
    d = processor.to_hf_dict()
    del d["offset"]
    return {**d, "image_processor_type": "VideoMAEImageProcessor"}


# LayerNorm eps of transformers' fc_norm: nn.LayerNorm's default, not the config's layer_norm_eps.
FC_NORM_EPS = 1e-5


@dataclass(frozen=True)
class VideoMAEConfig(ViViTConfig):
    """Architecture of a VideoMAE video classifier (transformers' `VideoMAEConfig`, classification fields).

    Differences from ViViT, in our names: `tubelet_size` is the full (time, height, width) kernel, that
    is HF's `(tubelet_size, *patch_size)`; `qkv_bias` (HF `qv_bias`, `qkv_bias` in older files) gives the
    queries and values a bias, never the keys; positions are a fixed sinusoidal table; there is no
    [CLS], so `n_pos` is the number of tubelets; `use_mean_pooling`: the classifier reads
    `fc_norm(mean over tokens)` (no final LayerNorm), else the first token after the final LayerNorm.
    """

    MODEL_TYPE: ClassVar[str] = "videomae"

    image_size: int | tuple[int, int] | list[int] = (224, 224)
    num_frames: int = 16
    tubelet_size: tuple[int, int, int] | list[int] = (2, 16, 16)
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12
    use_mean_pooling: bool = True

    def __post_init__(self) -> None:
        _of_type("use_mean_pooling", self.use_mean_pooling, bool, "true or false")
        if self.head_dim is not None:
            raise ConfigError(
                f"VideoMAE has no head_dim (it is hidden_size / num_attention_heads), got {self.head_dim}"
            )
        super().__post_init__()

    @property
    def key_bias(self) -> bool:
        return False

    @property
    def patch_size(self) -> tuple[int, int]:
        return self.tubelet_size[1], self.tubelet_size[2]

    @property
    def n_pos(self) -> int:
        """Sequence length: the tubelets (VideoMAE has no [CLS])."""
        return self.n_tubelets

    @property
    def readout_positions(self) -> tuple[int, ...]:
        """Every token with `use_mean_pooling` (their mean), else the first token."""
        return tuple(range(self.n_pos)) if self.use_mean_pooling else (0,)

    @property
    def readout_norm_name(self) -> str:
        return "fc_norm" if self.use_mean_pooling else "ln_final"

    @property
    def readout_norm_eps(self) -> float:
        return FC_NORM_EPS if self.use_mean_pooling else self.layer_norm_eps

    @property
    def readout_norm_pooled(self) -> bool:
        return self.use_mean_pooling

    @property
    def n_parameters(self) -> int:
        d, d_attn = self.hidden_size, self.n_heads * self.d_head
        t, ph, pw = self.tubelet_size
        embed = self.num_channels * t * ph * pw * d + d
        attn = 3 * d * d_attn + (2 * d_attn if self.qkv_bias else 0) + d_attn * d + d
        mlp = 2 * d * self.intermediate_size + self.intermediate_size + d
        return embed + self.n_layers * (attn + mlp + 4 * d) + 2 * d + (d + 1) * len(self.id2label)

    @property
    def model_name(self) -> str:
        return "videomae"

    @property
    def original_architecture(self) -> str:
        return "VideoMAEForVideoClassification"

    # HF JSON ---------------------------------------------------------------------------------
    @classmethod
    def _our_fields(cls, d: dict[str, Any]) -> dict[str, Any]:
        """HF's `tubelet_size` (frames) and `patch_size` as our (t, h, w) kernel; `qv_bias` (or the older
        `qkv_bias`) as `qkv_bias`; `head_dim` dropped (transformers' VideoMAE has none)."""
        d = {k: v for k, v in d.items() if v is not None and k != "head_dim"}
        if "qv_bias" in d and "qkv_bias" in d and d["qv_bias"] != d["qkv_bias"]:
            raise ConfigError(f"qv_bias ({d['qv_bias']!r}) and qkv_bias ({d['qkv_bias']!r}) disagree")
        if "qv_bias" in d:
            d["qkv_bias"] = d.pop("qv_bias")
        t = d.get("tubelet_size", 2)
        if not (_is_int(t) and t > 0):
            raise ConfigError(f"tubelet_size must be a positive int (frames per tubelet), got {t!r}")
        d["tubelet_size"] = (t, *_pair(d.pop("patch_size", 16), "patch_size"))
        return d

    def to_hf_dict(self) -> dict[str, Any]:
        d = super().to_hf_dict()
        ph, pw = self.patch_size
        d.pop("head_dim", None)
        d.pop("qkv_bias")
        d.update(
            tubelet_size=self.tubelet_size[0],
            patch_size=ph if ph == pw else [ph, pw],
            qv_bias=self.qkv_bias,
            model_type="videomae",
            architectures=["VideoMAEForVideoClassification"],
        )
        return d
