"""ActivationCache: the activations of one run, by hook name, with TransformerLens-style lookups.

    logits, cache = model.run_with_cache(x)
    cache["blocks.3.hook_resid_post"] is cache["resid_post", 3]          # short names, as in TransformerLens
    cache.save("run.safetensors"); ActivationCache.load("run.safetensors")   # no model needed
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from vivit_lens.config import ViViTConfig
from vivit_lens.utils import get_act_name


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping from hook names to activations (and `name + "_grad"` for gradients)."""

    def __init__(self, cache: dict[str, Tensor], config: ViViTConfig | None = None):
        self._cache = cache
        self.cfg = config

    def _key(self, key: str | tuple) -> str:
        return get_act_name(*key) if isinstance(key, tuple) else key

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._key(key)
        try:
            return self._cache[name]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(name, self._cache, n=5, cutoff=0.5)
            hint = f"; closest cached names: {close}" if close else f"; the cache holds {len(self)} activations"
            raise KeyError(f"{name!r} is not in the cache{hint}") from None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, (str, tuple)) and self._key(key) in self._cache

    def __iter__(self) -> Iterator[str]:
        return iter(self._cache)

    def __len__(self) -> int:
        return len(self._cache)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} activations: {list(self._cache)[:4]}{' ...' if len(self) > 4 else ''})"

    def to(self, device: str | torch.device) -> ActivationCache:
        return ActivationCache({k: v.to(device) for k, v in self._cache.items()}, self.cfg)

    def save(self, path: str | Path) -> None:
        """Write the cache (and the model config, if known) to one safetensors file."""
        meta = {"config": json.dumps(self.cfg.to_hf_dict())} if self.cfg is not None else {}
        save_file({k: v.contiguous() for k, v in self._cache.items()}, str(path), metadata=meta)

    @classmethod
    def load(cls, path: str | Path) -> ActivationCache:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        cfg = ViViTConfig.from_hf_dict(json.loads(meta["config"])) if "config" in meta else None
        return cls(load_file(str(path)), cfg)
