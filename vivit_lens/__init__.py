"""vivit_lens: hookable video transformers (ViViT, VideoMAE) for mechanistic interpretability.

    import vivit_lens
    model = vivit_lens.from_pretrained("google/vivit-b-16x2-kinetics400")   # HookedViViT, or HookedVideoMAE
    logits, cache = model.run_with_cache(pixel_values)
"""

from vivit_lens.auto import from_pretrained
from vivit_lens.cache import ActivationCache
from vivit_lens.config import ProcessorConfig, ViViTConfig
from vivit_lens.convert import CheckpointError
from vivit_lens.hooks import HookNameError, HookPoint
from vivit_lens.loading import CheckpointNotFoundError
from vivit_lens.model import HookedViViT, InputError
from vivit_lens.utils import get_act_name
from vivit_lens.videomae import HookedVideoMAE
from vivit_lens.videomae_config import VideoMAEConfig

__version__ = "0.1.0"

__all__ = [
    "ActivationCache", "CheckpointError", "CheckpointNotFoundError", "HookNameError", "HookPoint", "HookedVideoMAE",
    "HookedViViT", "InputError", "ProcessorConfig", "VideoMAEConfig", "ViViTConfig", "from_pretrained", "get_act_name",
]  # fmt: skip
