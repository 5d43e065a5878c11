"""TransformerLens' generic activation patching interface: any patch setter, one forward per index.

`generic_activation_patch` takes TransformerLens' arguments and returns its shapes; the patch
setters are TransformerLens' (same names, same index conventions). Each patched run resumes at
the patched layer from the corrupted run's cached residual (the prefix is computed once), and the
sequence length of a position axis is the model's (`cfg.n_pos`), not the last axis of the input:
for video the last axis of the input is the frame width.

    from vivit_lens.interp.generic_patching import generic_activation_patch, layer_pos_patch_setter
    out = generic_activation_patch(model, corrupt, clean_cache, metric, layer_pos_patch_setter, "resid_pre",
                                   index_axis_names=("layer", "pos"))            # [layer pos]
    get_act_patch_direct_path(model, corrupt, clean_cache, corrupt_cache, metric, 0, 1)   # [layer head]
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vivit_lens.models.utils import get_act_name, hook_layer, resume_hook

AXES = ("layer", "pos", "head_index", "head", "src_pos", "dest_pos")


# Patch setters (TransformerLens names and index conventions) --------------------------------------
def _copy_at(corrupted: Tensor, clean: Tensor, where: tuple) -> Tensor:
    corrupted[where] = clean[where]
    return corrupted


def layer_pos_patch_setter(corrupted_activation: Tensor, index: Sequence[int], clean_activation: Tensor) -> Tensor:
    """index = (layer, pos): an activation `[batch pos ...]` takes the clean values at `pos`."""
    return _copy_at(corrupted_activation, clean_activation, (slice(None), index[1]))


def layer_pos_head_vector_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                       clean_activation: Tensor) -> Tensor:  # fmt: skip
    """index = (layer, pos, head): a head vector `[batch pos head ...]` (q, k, v, z, result) at one position."""
    return _copy_at(corrupted_activation, clean_activation, (slice(None), index[1], index[2]))


def layer_head_vector_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                   clean_activation: Tensor) -> Tensor:  # fmt: skip
    """index = (layer, head): a head vector `[batch pos head ...]` at every position."""
    return _copy_at(corrupted_activation, clean_activation, (slice(None), slice(None), index[1]))


def layer_head_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                    clean_activation: Tensor) -> Tensor:  # fmt: skip
    """index = (layer, head): an attention pattern or score `[batch head dest src]`, the whole head."""
    return _copy_at(corrupted_activation, clean_activation, (slice(None), index[1]))


def layer_head_pos_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                        clean_activation: Tensor) -> Tensor:  # fmt: skip
    """index = (layer, head, dest_pos): one query row of a pattern `[batch head dest src]`."""
    return _copy_at(corrupted_activation, clean_activation, (slice(None), index[1], index[2]))


def layer_head_dest_src_pos_pattern_patch_setter(corrupted_activation: Tensor, index: Sequence[int],
                                                 clean_activation: Tensor) -> Tensor:  # fmt: skip
    """index = (layer, head, dest_pos, src_pos): one entry of a pattern `[batch head dest src]`."""
    return _copy_at(corrupted_activation, clean_activation, (slice(None), *index[1:4]))


# The generic loop ---------------------------------------------------------------------------------
def _result_dtype(model) -> torch.dtype:
    return torch.promote_types(getattr(model.cfg, "dtype", torch.float32), torch.float32)


def _metric_value(metric: Callable, logits: Tensor, reduce: str) -> Tensor:
    value = torch.as_tensor(metric(logits))
    if reduce == "mean":
        if value.ndim != 1 or value.shape[0] != logits.shape[0]:
            raise ValueError(f"with reduce='mean' the metric must return a [batch] tensor of {logits.shape[0]}, "
                             f"got shape {tuple(value.shape)}")  # fmt: skip
        return value.detach().mean()
    if value.numel() != 1:
        raise ValueError(f"the metric must return a scalar for the whole batch (TransformerLens' reduce='scalar'), "
                         f"got shape {tuple(value.shape)}; return a [batch] tensor and pass reduce='mean'")  # fmt: skip
    return value.detach().reshape(())


def _index_rows(index_axis_names, index_df, model) -> tuple[list[list[int]], tuple[int, ...] | None, list[str]]:
    """(index rows, output shape or None for a flat output, column names)."""
    if index_df is not None:
        if index_axis_names is not None:
            raise ValueError("pass index_axis_names or index_df, not both")
        if hasattr(index_df, "iterrows"):
            return [[int(v) for v in row.tolist()] for _, row in index_df.iterrows()], None, list(index_df.columns)
        rows = [[int(v) for v in row] for row in index_df]
        return rows, None, [f"axis{i}" for i in range(len(rows[0]) if rows else 0)]
    if index_axis_names is None:
        raise ValueError("pass index_axis_names (e.g. ('layer', 'pos')) or index_df")
    bad = [a for a in index_axis_names if a not in AXES]
    if bad:
        raise ValueError(f"unknown axis names {bad}; expected some of {AXES}")
    cfg = model.cfg
    size = {"layer": cfg.n_layers, "head": cfg.n_heads, "head_index": cfg.n_heads}
    shape = tuple(size.get(a, cfg.n_pos) for a in index_axis_names)  # every position axis: the model's n_pos
    grid = torch.cartesian_prod(*[torch.arange(n) for n in shape]) if len(shape) > 1 else torch.arange(shape[0])[:, None]
    return grid.reshape(-1, len(shape)).tolist(), shape, list(index_axis_names)


def _resumable_runs(model, corrupted: Tensor, names: Iterable[str]) -> dict[int, Tensor]:
    """The corrupted run's residual at the input of every layer a patched run can resume from."""
    n = model.cfg.n_layers
    layers = sorted({l for l in (hook_layer(name, n) for name in names) if l is not None})
    if not layers:
        return {}
    hooks = [resume_hook(l, n) for l in layers]
    with torch.no_grad():
        _, cache = model.run_with_cache(corrupted, names_filter=hooks)
    return {l: cache[h] for l, h in zip(layers, hooks)}


def _run_from(model, corrupted: Tensor, resid: Mapping[int, Tensor], name: str, hooks: list) -> Tensor:
    """Logits of the corrupted run with `hooks`, resumed at the layer of hook `name` when possible."""
    layer = hook_layer(name, model.cfg.n_layers)
    with torch.no_grad():
        if layer is None or layer not in resid:
            return model.run_with_hooks(corrupted, fwd_hooks=hooks)
        if layer == model.cfg.n_layers:
            with model.hooks(hooks):
                return model.unembed(model.readout(resid[layer]))
        return model.run_with_hooks(resid[layer], start_at_layer=layer, fwd_hooks=hooks)


def generic_activation_patch(
    model,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor],
    patching_metric: Callable[[Tensor], Any],
    patch_setter: Callable[[Tensor, Sequence[int], Tensor], Tensor],
    activation_name: str,
    index_axis_names: Sequence[str] | None = None,
    index_df: Any = None,
    return_index_df: bool = False,
    *,
    reduce: str = "scalar",
    baseline: bool = False,
    progress: bool = True,
) -> Tensor | tuple[Tensor, Any]:
    """TransformerLens' `generic_activation_patch`: one patched corrupted run per index, the metric of each.

    For every index (a row of `index_df`, or every combination of `index_axis_names`, the first
    being the layer), the activation `get_act_name(activation_name, index[0])` of the corrupted
    run is replaced by `patch_setter(activation, index, clean_cache[that name])`, and
    `patching_metric` is called on the patched logits of the whole batch. `reduce="scalar"`: it
    returns a scalar; `"mean"`: a `[batch]` tensor, averaged. The output has one axis per
    index axis (a flat `[len(index_df)]` with `index_df`); `return_index_df` also returns the
    index table (a pandas DataFrame). Positions range over `model.cfg.n_pos`.

    TransformerLens' `reduce="none"`, `baseline=True` and metric mappings return its
    `PatchingResult`; they are not offered here (`patch_sweep` reports both baseline metrics).
    """
    if reduce not in ("scalar", "mean"):
        raise ValueError(f"reduce must be 'scalar' or 'mean' here, got {reduce!r} (per-example results: patch_sweep)")
    if baseline or isinstance(patching_metric, Mapping):
        raise ValueError("baseline=True and metric mappings (TransformerLens' PatchingResult) are not supported; "
                         "patch_sweep returns the clean and corrupt metrics in .meta")  # fmt: skip
    rows, shape, columns = _index_rows(index_axis_names, index_df, model)
    names = [get_act_name(activation_name, layer=row[0]) for row in rows]
    for name in dict.fromkeys(names):
        model._hook_point(name)
        if name not in clean_cache:
            raise KeyError(f"the clean cache has no {name!r}; cache it (names_filter) before patching")
    resid = _resumable_runs(model, corrupted_tokens, names)
    store = torch.zeros(len(rows), dtype=_result_dtype(model), device=model.cfg.device)
    for i, (row, name) in enumerate(tqdm(list(zip(rows, names)), desc=f"patching {activation_name}",
                                         disable=not progress, leave=False)):  # fmt: skip
        clean = clean_cache[name]

        def patch(act: Tensor, hook, row=row, clean=clean) -> Tensor:
            return patch_setter(act.clone(), row, clean.to(act))

        logits = _run_from(model, corrupted_tokens, resid, name, [(name, patch)])
        store[i] = _metric_value(patching_metric, logits, reduce).to(store)
    out = store if shape is None else store.reshape(shape)
    if not return_index_df:
        return out
    import pandas as pd  # only for the index table, as TransformerLens returns it

    return out, pd.DataFrame(rows, columns=columns)


def get_act_patch_attn_head_pattern_dest_src_pos(model, corrupted_tokens, clean_cache, patching_metric,
                                                 **kwargs) -> Float[Tensor, "layer head dest_pos src_pos"]:  # fmt: skip
    """TransformerLens' sweep of every (layer, head, query, key) entry of the attention pattern, one run each.

    `n_layers * n_heads * n_pos**2` forwards: meant for small models (a full ViViT-B would need 1.4e8).
    """
    return generic_activation_patch(model, corrupted_tokens, clean_cache, patching_metric,
                                    layer_head_dest_src_pos_pattern_patch_setter, "pattern",
                                    index_axis_names=("layer", "head_index", "dest_pos", "src_pos"), **kwargs)  # fmt: skip


# Direct path patching (TransformerLens 4.3) -------------------------------------------------------
def get_act_patch_direct_path(
    model,
    corrupted_tokens: Tensor,
    clean_cache: Mapping[str, Tensor],
    corrupted_cache: Mapping[str, Tensor],
    patching_metric: Callable[[Tensor], Any],
    src_layer: int,
    src_head: int,
    component: str = "q",
    verbose: bool = True,
) -> Float[Tensor, "layer head"]:
    """The edge from one head into each later head's q, k or v input alone (TransformerLens 4.3).

    The source head's clean - corrupted write (`z @ W_O`) is added, at every position, to one later
    head's own copy of the residual going into ln1 (`blocks.{l}.hook_{component}_input`); every
    other reader sees the corrupted run. `results[l, h]` is the metric of that run; rows
    `l <= src_layer` are 0 (no path). The same quantity as `PathPatcher(...).receivers_of` (frozen),
    plus the corrupted run's metric. Both caches must hold `blocks.{src_layer}.attn.hook_z`.
    """
    if component not in ("q", "k", "v"):
        raise ValueError(f"component must be 'q', 'k' or 'v', got {component!r}")
    cfg = model.cfg
    if not 0 <= src_layer < cfg.n_layers or not 0 <= src_head < cfg.n_heads:
        raise ValueError(f"source head L{src_layer}H{src_head} is not in a model of {cfg.n_layers} x {cfg.n_heads}")
    z_name = f"blocks.{src_layer}.attn.hook_z"
    W_O = model.blocks[src_layer].attn.W_O[src_head].detach()
    delta = (clean_cache[z_name][:, :, src_head] - corrupted_cache[z_name][:, :, src_head]).to(W_O) @ W_O
    results = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=_result_dtype(model), device=cfg.device)
    receivers = [(l, h) for l in range(src_layer + 1, cfg.n_layers) for h in range(cfg.n_heads)]
    names = [f"blocks.{l}.hook_{component}_input" for l, _ in receivers]
    resid = _resumable_runs(model, corrupted_tokens, names)
    for (layer, head), name in zip(tqdm(receivers, desc=f"direct paths from L{src_layer}H{src_head}",
                                        disable=not verbose, leave=False), names):  # fmt: skip

        def add_write(split_input: Tensor, hook, head=head) -> Tensor:
            out = split_input.clone()
            out[:, :, head] += delta.to(out)
            return out

        logits = _run_from(model, corrupted_tokens, resid, name, [(name, add_write)])
        results[layer, head] = _metric_value(patching_metric, logits, "scalar").to(results)
    return results


def get_act_patch_direct_path_all_sources(model, corrupted_tokens, clean_cache, corrupted_cache, patching_metric,
                                          component: str = "q", verbose: bool = True
                                          ) -> Float[Tensor, "src_layer src_head layer head"]:  # fmt: skip
    """`get_act_patch_direct_path` from every source head: `[src_layer src_head layer head]`, 0 where no path."""
    cfg = model.cfg
    out = torch.zeros(cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads, dtype=_result_dtype(model),
                      device=cfg.device)  # fmt: skip
    for layer in range(cfg.n_layers):
        for head in range(cfg.n_heads):
            out[layer, head] = get_act_patch_direct_path(model, corrupted_tokens, clean_cache, corrupted_cache,
                                                         patching_metric, layer, head, component, verbose=False)  # fmt: skip
    return out


__all__ = [
    "generic_activation_patch", "get_act_patch_attn_head_pattern_dest_src_pos", "get_act_patch_direct_path",
    "get_act_patch_direct_path_all_sources", "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter", "layer_head_pos_pattern_patch_setter", "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter", "layer_pos_patch_setter",
]  # fmt: skip
