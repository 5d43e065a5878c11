"""vivit_lens: a hookable ViViT for mechanistic interpretability of video transformers.

    from vivit_lens import HookedViViT
    model = HookedViViT.from_pretrained("google/vivit-b-16x2-kinetics400")
    logits, cache = model.run_with_cache(pixel_values)
"""

from vivit_lens.cache import ActivationCache
from vivit_lens.config import ProcessorConfig, ViViTConfig
from vivit_lens.convert import CheckpointError
from vivit_lens.hooks import HookNameError, HookPoint
from vivit_lens.loading import CheckpointNotFoundError
from vivit_lens.model import HookedViViT, InputError
from vivit_lens.utils import get_act_name

__version__ = "0.1.0"

__all__ = [
    "ActivationCache", "CheckpointError", "CheckpointNotFoundError", "HookNameError", "HookPoint", "HookedViViT",
    "InputError", "ProcessorConfig", "ViViTConfig", "get_act_name",
]  # fmt: skip
