"""Small shared helpers: TransformerLens-style activation names, index tuples.

    get_act_name("resid_pre", 3)      # "blocks.3.hook_resid_pre"
    get_act_name("pattern", 9)        # "blocks.9.attn.hook_pattern"
    get_act_name("scale", 2, "ln1")   # "blocks.2.ln1.hook_scale"
    index_tuple(torch.tensor([3, 4])) # (3, 4)
"""

from __future__ import annotations

from typing import Any

import torch

_ATTN = {"q", "k", "v", "z", "result", "attn_scores", "pattern"}
_MLP = {"pre", "post"}
_BLOCK = {"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in", "q_input", "k_input", "v_input"}
_ALIASES = {"attn": "pattern", "scores": "attn_scores", "hidden": "post"}


def get_act_name(name: str, layer: int | None = None, sublayer: str | None = None) -> str:
    """The full hook name for a short activation name and a layer (TransformerLens `utils.get_act_name`)."""
    if "." in name or name.startswith("hook_"):
        return name
    name = _ALIASES.get(name, name)
    if layer is None:
        if name in ("embed", "pos_embed"):
            return f"hook_{name}"
        if name in ("scale", "normalized"):
            return f"ln_final.hook_{name}"
        raise ValueError(f"{name!r} needs a layer index")
    if name in ("scale", "normalized"):
        if sublayer not in ("ln1", "ln2"):
            raise ValueError(f"{name!r} needs sublayer 'ln1' or 'ln2', got {sublayer!r}")
        return f"blocks.{layer}.{sublayer}.hook_{name}"
    if name in _ATTN:
        return f"blocks.{layer}.attn.hook_{name}"
    if name in _MLP:
        return f"blocks.{layer}.mlp.hook_{name}"
    if name in _BLOCK:
        return f"blocks.{layer}.hook_{name}"
    raise ValueError(f"unknown activation name {name!r}")


def index_tuple(x: Any) -> tuple[int, ...] | None:
    """Positions or heads as a tuple of ints: None stays None (all), an int is one index, a tensor is flattened."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return tuple(int(i) for i in x.reshape(-1).tolist())
    if isinstance(x, int):
        return (x,)
    return tuple(int(i) for i in x)
