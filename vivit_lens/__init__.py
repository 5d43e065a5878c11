"""vivit_lens: hookable video transformers (ViViT, VideoMAE) for mechanistic interpretability.

    import vivit_lens
    model = vivit_lens.from_pretrained("google/vivit-b-16x2-kinetics400")   # HookedViViT, or HookedVideoMAE
    logits, cache = model.run_with_cache(pixel_values)

The package, by layer:
    vivit_lens.models   the hookable architectures: hook points, blocks, configs, ViViT, VideoMAE, checkpoint
                        conversion and loading, the token grid, device / dtype placement
    vivit_lens.interp   the analysis core every architecture shares: ActivationCache, activation / path /
                        attribution patching, ablation, probes, metrics and measurements, the memory guard
    vivit_lens.io       videos in and out, output folders that are complete or absent, the shipped assets
    vivit_lens.study    the paper's pipeline and its outputs: analyze_pair / study, Ray runners, reports,
                        plots, tables, the `vivit-lens` CLI
    vivit_lens.train, vivit_lens.synthetic   training the shipped model on rendered clips
At import time models imports none of the others, interp and io import models, study imports all three; the few
imports the other way are lazy (run_with_cache's ActivationCache, the memory guard, probes' clip loading and runners).
Every module's old flat name (vivit_lens.model, vivit_lens.cache, vivit_lens.analysis, ...) still imports, as the
same module object (see vivit_lens._aliases).
"""

import sys

# first: installs the finder by which the old module names (vivit_lens.model, vivit_lens.cache, ...) import
from vivit_lens import _aliases
from vivit_lens.interp.cache import ActivationCache
from vivit_lens.models.auto import from_pretrained
from vivit_lens.models.config import ProcessorConfig, ViViTConfig
from vivit_lens.models.convert import CheckpointError
from vivit_lens.models.hooks import HookNameError, HookPoint
from vivit_lens.models.loading import CheckpointNotFoundError
from vivit_lens.models.utils import get_act_name
from vivit_lens.models.videomae import HookedVideoMAE
from vivit_lens.models.videomae_config import VideoMAEConfig
from vivit_lens.models.vivit import HookedViViT, InputError

__version__ = "0.1.0"


def __getattr__(name: str):
    """`vivit_lens.analysis` (an old module name) as an attribute, before anything imported it."""
    return _aliases.resolve(sys.modules[__name__], name)


__all__ = [
    "ActivationCache", "CheckpointError", "CheckpointNotFoundError", "HookNameError", "HookPoint", "HookedVideoMAE",
    "HookedViViT", "InputError", "ProcessorConfig", "VideoMAEConfig", "ViViTConfig", "from_pretrained", "get_act_name",
]  # fmt: skip
