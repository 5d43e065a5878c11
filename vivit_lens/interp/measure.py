"""The paper's other measurements: activation-delta norms per layer, and [CLS] attention mapped onto the video.

    norms = delta_norms(clean_cache, corrupt_cache)          # [hook layer where]: the "amplification cascade"
    attn = cls_attention(model, x, layers=[9, 10])           # [layer head frame row col]
    top_heads_by_cls_attention(attn, region_positions, k=5)  # which heads look at the ball-pin region
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vivit_lens.interp.cache import ActivationCache
from vivit_lens.models.grid import TokenGrid
from vivit_lens.interp.patching import LabeledTensor
from vivit_lens.models.utils import get_act_name

DELTA_HOOKS = ("resid_pre", "resid_post", "attn_out", "mlp_out")


def delta_norms(
    clean_cache: Mapping[str, Tensor],
    corrupt_cache: Mapping[str, Tensor],
    hooks: Sequence[str] = DELTA_HOOKS,
    layers: Sequence[int] | None = None,
) -> LabeledTensor:
    """L2 norm of `clean - corrupt` per layer: `[hook layer where]`, `where` = (`cls`, `token_mean`).

    For each hook `blocks.{l}.hook_{name}` (`[batch pos d_model]`): `cls` is the mean over the readout
    positions (`cfg.readout_positions`; ViViT: [CLS], `||delta[:, 0]||`) of `||delta[:, p]||` (labelled
    `readout` for a model without [CLS]), `token_mean` is the mean over all positions of `||delta[:, p]||`
    (the paper's "average L2 norm of the activation delta"); both averaged over the batch (one clip pair:
    batch 1). A cache without a config reads position 0.
    """
    if layers is None:
        cfg = getattr(clean_cache, "cfg", None)
        n = cfg.n_layers if cfg is not None else 1 + max(int(k.split(".")[1]) for k in clean_cache if k.startswith("blocks."))
        layers = list(range(n))
    cfg = getattr(clean_cache, "cfg", None)
    readout = list(cfg.readout_positions) if cfg is not None else [0]
    where = "readout" if cfg is not None and TokenGrid(cfg).cls is None else "cls"
    rows = []  # built where the caches are (the model's device), float64
    for hook in hooks:
        for layer in layers:
            name = get_act_name(hook, layer)
            if name not in clean_cache or name not in corrupt_cache:
                raise KeyError(f"{name!r} must be in both caches")
            delta = (clean_cache[name] - corrupt_cache[name]).double()
            if delta.ndim != 3:
                raise ValueError(f"{name} is {tuple(delta.shape)}; delta norms need [batch pos d_model] activations")
            per_token = delta.norm(dim=-1)  # [batch pos]
            rows.append(torch.stack([per_token[:, readout].mean(), per_token.mean()]))
    values = torch.stack(rows).reshape(len(hooks), len(layers), 2)
    return LabeledTensor(values, ("hook", "layer", "where"), (tuple(hooks), tuple(layers), (where, "token_mean")),
                         name="l2_norm")  # fmt: skip


def cls_attention(
    source: Any,
    x: Tensor | None = None,
    *,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    batch_index: int = 0,
) -> LabeledTensor:
    """How much the readout attends to each tubelet, per layer and head: `[layer head frame row col]`.

    The readout's attention is that of the queries at the readout positions, averaged over them
    (`ActivationCache.readout_attention_row`): on ViViT, the [CLS] query's.

    `source`: an ActivationCache holding `hook_pattern` (or `hook_q` and `hook_k`) of the layers,
    or the model together with pixel values `x` (then only q and k are cached: no
    `[head pos pos]` pattern is built). `frame` is the tubelet time (input frames `t*T .. t*T+T-1`
    for tubelet depth T). The weight put on [CLS] is in `meta["cls_self"]` `[layer head]` (zero for a
    model without [CLS]); with it, each `[layer, head]` map sums to 1. `meta["first"]` is the position
    of the first tubelet token (1 after [CLS], else 0).
    """
    if isinstance(source, ActivationCache):
        cache, cfg = source, source.cfg
    else:
        model, cfg = source, source.cfg
        if x is None:
            raise ValueError("cls_attention(model, x): pixel values are needed to run the model")
        wanted = range(cfg.n_layers) if layers is None else layers
        names = [get_act_name(a, l) for l in wanted for a in ("q", "k")]
        stop = max(wanted) + 1
        with torch.no_grad():
            kwargs = {"stop_at_layer": stop} if stop < cfg.n_layers else {}
            _, cache = model.run_with_cache(x, names_filter=names, **kwargs)
    layers = list(range(cfg.n_layers)) if layers is None else [int(l) for l in layers]
    heads = list(range(cfg.n_heads)) if heads is None else [int(h) for h in heads]
    rows = torch.stack([cache.readout_attention_row(l)[batch_index, heads] for l in layers])  # [layer head pos]
    token_grid = TokenGrid(cfg)
    grid = token_grid.to_grid(rows)
    cls_self = rows[..., token_grid.cls] if token_grid.cls is not None else rows.new_zeros(rows.shape[:-1])
    t, h, w = cfg.grid_shape
    tt = cfg.tubelet_size[0]
    frame_labels = tuple(f"frames {i * tt}-{i * tt + tt - 1}" if tt > 1 else f"frame {i}" for i in range(t))
    return LabeledTensor(grid, ("layer", "head", "frame", "row", "col"),
                         (tuple(layers), tuple(heads), frame_labels, tuple(range(h)), tuple(range(w))),
                         name="attention", meta={"cls_self": cls_self, "first": token_grid.first})  # fmt: skip


def top_heads_by_cls_attention(
    attention: LabeledTensor, positions: Sequence[int] | Tensor | None = None, k: int = 10
) -> list[dict[str, Any]]:
    """Heads ranked by the readout's attention mass they put on a token set (None: the most on any one token).

    `attention`: the output of `cls_attention`; `positions`: token positions (`first + t*H*W + h*W + w`,
    first = 1 after [CLS] on ViViT, 0 without; e.g. from `model.grid.positions(...)`). Rows: `layer`, `head`, `mass` (sum of attention on the
    set, or the largest single weight), and `peak` (`(frame, row, col)` of its largest weight).
    """
    values = attention.values  # [layer head t h w]
    flat = values.reshape(values.shape[0], values.shape[1], -1)
    if positions is None:
        score = flat.max(-1).values
    else:
        first = int(attention.meta.get("first", 1))
        idx = torch.as_tensor(positions, dtype=torch.long).reshape(-1) - first
        if (idx < 0).any() or (idx >= flat.shape[-1]).any():
            cls = " ([CLS] = 0 is not on the grid)" if first else ""
            raise ValueError(f"positions must be tubelet tokens in [{first}, {first + flat.shape[-1]}){cls}, "
                             f"got {torch.as_tensor(positions).reshape(-1).tolist()[:8]}")  # fmt: skip
        score = flat[..., idx].sum(-1)
    order = torch.argsort(score.reshape(-1), descending=True, stable=True)[:k]
    out = []
    for o in order.tolist():
        li, hi = divmod(o, values.shape[1])
        peak = np.unravel_index(int(flat[li, hi].argmax()), values.shape[2:])
        out.append({"layer": attention.labels[0][li], "head": attention.labels[1][hi], "mass": float(score[li, hi]),
                    "peak": tuple(int(i) for i in peak)})  # fmt: skip
    return out


readout_attention = cls_attention  # the same measurement under the readout's name
top_heads_by_readout_attention = top_heads_by_cls_attention

__all__ = ["DELTA_HOOKS", "cls_attention", "readout_attention", "top_heads_by_readout_attention", "delta_norms", "top_heads_by_cls_attention"]
