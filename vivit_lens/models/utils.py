"""Small shared helpers: TransformerLens-style activation names, index tuples.

    get_act_name("resid_pre", 3)      # "blocks.3.hook_resid_pre"
    get_act_name("k6")                # "blocks.6.attn.hook_k" (TransformerLens' compact form)
    get_act_name("scale", 2, "ln1")   # "blocks.2.ln1.hook_scale"
    index_tuple(torch.tensor([3, 4])) # (3, 4)
"""

from __future__ import annotations

import re
from typing import Any

import torch

# What TransformerLens' get_act_name accepts, with the same meaning: aliases of activation names,
# aliases of the sublayer argument, and the names whose sublayer is implied.
_NAME_ALIASES = {
    "attn": "pattern", "attn_logits": "attn_scores", "key": "k", "query": "q", "value": "v",
    "mlp_pre": "pre", "mlp_mid": "mid", "mlp_post": "post",
    "scores": "attn_scores", "hidden": "post",  # ours, kept for existing callers
}  # fmt: skip
_SUBLAYER_ALIASES = {"a": "attn", "attention": "attn", "m": "mlp", "b": "", "block": "", "blocks": ""}
_IN_ATTN = {"q", "k", "v", "z", "rot_q", "rot_k", "result", "pattern", "attn_scores"}
_IN_MLP = {"pre", "post", "mid", "pre_linear"}
_COMPACT = re.compile(r"([a-z]+)(\d+)([a-z]?.*)")  # "k6" -> (k, 6, ""), "scale4ln1" -> (scale, 4, ln1)

# Every hook name HookedViViT has: a resolved name must be one of these.
_VALID = re.compile(
    r"hook_(embed|pos_embed)|ln_final\.hook_(scale|normalized)"
    r"|blocks\.\d+\.(hook_(resid_pre|resid_mid|resid_post|attn_out|mlp_out|mlp_in|q_input|k_input|v_input)"
    r"|ln[12]\.hook_(scale|normalized)|attn\.hook_(q|k|v|attn_scores|pattern|z|result)|mlp\.hook_(pre|post))"
)


def get_act_name(name: str, layer: int | str | None = None, sublayer: str | None = None) -> str:
    """The full hook name for a short activation name (TransformerLens `utils.get_act_name`).

    Accepts what TransformerLens accepts and resolves it the same way: full names (returned as
    they are), aliases (`attn` -> pattern, `attn_logits`, `key`/`query`/`value`, `mlp_pre`,
    `mlp_post`), sublayer aliases (`a`, `attention`, `m`, `b`, `block`) and the compact forms
    `k6`, `pre5`, `scale4ln1`. Unlike TransformerLens, a name that no HookedViViT hook has
    (`resid_pre` without a layer, `scale` of a block without `ln1`/`ln2`) is a ValueError.
    """
    if "." in name or name.startswith("hook_"):
        return name
    compact = _COMPACT.fullmatch(name)
    if compact is not None:
        name, layer, sublayer = compact.group(1), compact.group(2), compact.group(3)
    name = _NAME_ALIASES.get(name, name)
    if name in _IN_ATTN:
        sublayer = "attn"
    elif name in _IN_MLP:
        sublayer = "mlp"
    else:
        sublayer = _SUBLAYER_ALIASES.get(sublayer, sublayer)
    if layer is None:
        full = f"ln_final.hook_{name}" if name in ("scale", "normalized") else f"hook_{name}"
    else:
        full = f"blocks.{int(layer)}." + (f"{sublayer}." if sublayer else "") + f"hook_{name}"
    if _VALID.fullmatch(full):
        return full
    if layer is None and _VALID.fullmatch(f"blocks.0.hook_{name}"):
        raise ValueError(f"{name!r} needs a layer index")
    if name in ("scale", "normalized") and sublayer not in ("ln1", "ln2"):
        raise ValueError(f"{name!r} of a block needs sublayer 'ln1' or 'ln2', got {sublayer!r}")
    raise ValueError(f"unknown activation name {name!r} (resolved to {full!r}, which HookedViViT has no hook for)")


_BLOCK_PREFIX = re.compile(r"^blocks\.(\d+)\.")


def hook_layer(name: str, n_layers: int) -> int | None:
    """The layer whose residual input a run must resume from to reach hook `name` (None: from the pixels)."""
    m = _BLOCK_PREFIX.match(name)
    if m:
        return int(m.group(1))
    if name.startswith("ln_final."):
        return n_layers
    return None


def resume_hook(layer: int, n_layers: int) -> str:
    """The residual hook a run resumed at `layer` starts from (`n_layers`: the final residual)."""
    return f"blocks.{layer}.hook_resid_pre" if layer < n_layers else f"blocks.{n_layers - 1}.hook_resid_post"


def index_tuple(x: Any) -> tuple[int, ...] | None:
    """Positions or heads as a tuple of ints: None stays None (all), an int is one index, a tensor is flattened."""
    if x is None:
        return None
    if isinstance(x, torch.Tensor):
        return tuple(int(i) for i in x.reshape(-1).tolist())
    if isinstance(x, int):
        return (x,)
    return tuple(int(i) for i in x)
