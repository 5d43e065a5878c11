"""HookedVideoMAE: transformers' VideoMAE video classifier with a hook point on every activation.

    model = HookedVideoMAE.from_pretrained("MCG-NJU/videomae-base-finetuned-kinetics")   # or a local folder
    logits, cache = model.run_with_cache(pixel_values)    # pixel_values [batch frames channels height width]
    cache["hook_pooled"]                                   # [batch d_model]: what the classifier reads

The blocks, hook names and layouts are HookedViViT's (the same components); what differs is the
embedding (no [CLS], a fixed sinusoidal position table `W_pos`, a buffer), the attention (no key bias)
and the readout: `fc_norm(mean over tokens)` with `use_mean_pooling`, else the first token after the
final LayerNorm. Position p is tubelet p: `p = t*(H'*W') + row*W' + col`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor, nn

from vivit_lens.models.components import Embed, LayerNorm, Resid, TransformerBlock
from vivit_lens.models.config import ProcessorConfig
from vivit_lens.models.hooks import HookedRootModule, HookPoint
from vivit_lens.models.vivit import HookedViViT, Unembed
from vivit_lens.models.videomae_config import FC_NORM_EPS, VideoMAEConfig, videomae_processor, videomae_processor_from_json



def sinusoid_table(n_pos: int, d_model: int) -> Float[Tensor, "pos d_model"]:
    """VideoMAE's fixed position table: `pos / 10000^(2*(j//2)/d)`, sine on even j, cosine on odd j.

    Computed in float64 and rounded to float32, as transformers does.
    """
    pos = torch.arange(n_pos, dtype=torch.float64)[:, None]
    j = torch.arange(d_model, dtype=torch.float64)
    angle = pos / torch.pow(10000.0, 2 * torch.div(j, 2, rounding_mode="floor") / d_model)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.to(torch.float32)


class SinusoidalPosEmbed(nn.Module):
    """A fixed position embedding, one row per token; `W_pos` is a buffer (moved and cast with the model,
    not trained, not in checkpoints)."""

    def __init__(self, cfg: VideoMAEConfig):
        super().__init__()
        self.register_buffer("W_pos", sinusoid_table(cfg.n_pos, cfg.d_model), persistent=False)

    def forward(self, batch: int) -> Resid:
        return self.W_pos.expand(batch, -1, -1)


class HookedVideoMAE(HookedViViT):
    """VideoMAE (joint space-time attention, no [CLS]) with HookedViViT's hook names.

    Computes what transformers' `VideoMAEForVideoClassification` computes (logits within 1e-5). Hook
    names are HookedViViT's, with `hook_pos_embed` the fixed table, plus `hook_pooled` `[batch d_model]`
    (the classifier's input); with `use_mean_pooling` there is no `ln_final` but `fc_norm.hook_scale`
    `[batch 1]` and `fc_norm.hook_normalized` `[batch d_model]`. Readout interface: see HookedViViT.
    """

    def __init__(self, cfg: VideoMAEConfig, processor: ProcessorConfig | None = None):
        if not isinstance(cfg, VideoMAEConfig):
            raise TypeError(f"HookedVideoMAE needs a VideoMAEConfig, got {type(cfg).__name__}")
        self._check_size(cfg)
        HookedRootModule.__init__(self)
        self.cfg = cfg
        self.processor = processor or videomae_processor(crop_size=cfg.image_size)
        self.embed = Embed(cfg, cls_token=False)
        self.hook_embed = HookPoint("batch pos d_model")
        self.pos_embed = SinusoidalPosEmbed(cfg)
        self.hook_pos_embed = HookPoint("batch pos d_model")
        self.blocks = nn.ModuleList([TransformerBlock(cfg, layer) for layer in range(cfg.n_layers)])
        if cfg.use_mean_pooling:
            self.fc_norm = LayerNorm(cfg, eps=FC_NORM_EPS, pooled=True)
        else:
            self.ln_final = LayerNorm(cfg)
        self.hook_pooled = HookPoint("batch d_model")
        self.unembed = Unembed(cfg)
        self.setup_hooks()
        self.eval()

    # Readout -------------------------------------------------------------------------------------
    def readout(self, resid: Resid) -> Float[Tensor, "batch d_model"]:
        """The vector the classifier reads: `fc_norm(resid.mean(pos))`, or `ln_final(resid)[:, 0]`."""
        if self.cfg.use_mean_pooling:
            return self.hook_pooled(self.fc_norm(resid.mean(dim=1)))
        return self.hook_pooled(self.ln_final(resid)[:, 0])

    @property
    def readout_hook_name(self) -> str:
        return "hook_pooled"

    # Loading and saving --------------------------------------------------------------------------
    # from_pretrained is HookedViViT's (device and dtype checked first, the crop checked against the model);
    # these two read VideoMAE's config and processor defaults.
    @classmethod
    def _config_from_json(cls, path: Path) -> VideoMAEConfig:
        return VideoMAEConfig.from_json(path)

    @classmethod
    def _processor_from_json(cls, path: Path, cfg: VideoMAEConfig) -> ProcessorConfig:
        return videomae_processor_from_json(path, cfg.image_size)

    @classmethod
    def from_hf_model(cls, hf_model: nn.Module) -> HookedVideoMAE:
        """Convert an in-memory transformers `VideoMAEForVideoClassification`."""
        model = cls(VideoMAEConfig.from_hf_dict(hf_model.config.to_dict()))
        model.load_hf_state_dict(hf_model.state_dict())
        return model

    def load_hf_state_dict(self, state: dict[str, Tensor]) -> None:
        """Fill every parameter from a checkpoint in either HF key scheme; strict, all-or-nothing."""
        from vivit_lens.models.convert import check_state_dict
        from vivit_lens.models.videomae_convert import hf_to_lens

        converted, unexpected = hf_to_lens(state)
        check_state_dict(converted, self.state_dict(), unexpected)
        self.load_state_dict(converted, strict=True)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write an HF folder (config.json, model.safetensors, preprocessor_config.json) that transformers loads."""
        from vivit_lens.models.videomae_convert import save_folder

        save_folder(self, folder, "hf")
