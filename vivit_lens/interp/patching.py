"""Activation patching: run one input, overwrite some activations with another run's, score the result.

Denoising (default, TransformerLens semantics): run the corrupted input and patch in clean
activations; noising (`direction="noising"`): run the clean input and patch in corrupt ones.

    m = SignalRecovery.from_caches(clean_cache, corrupt_cache, final_resid_hook(model))   # the paper's %
    res = patch_sweep(model, clean, corrupt, m, act="z", heads="each")   # PatchResult [layer head]
    get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, m)  # the same numbers, TL-style

The engine (`run_patches`) runs the target input once with its residual stream cached, then
resumes every patched run at the layer of its earliest patch (`start_at_layer`, no recomputed
prefix), many patched runs stacked on the batch axis (`batch_size`), each row with its own patch
through one hook per hook point. Metrics are `vivit_lens.metrics.Metric`s (one number per batch
row; those reading an intermediate hook are captured there and the run stops after that layer),
or TransformerLens-style callables on the patched logits of the whole batch `[B, n_classes]`,
returning a scalar, called once per patched run.
`fast=True` (default) adds two exact shortcuts: a patch of head outputs (`hook_z`) resumes after
that layer's attention (only the o_proj is recomputed), and when the metric reads only a few
positions of the final residual (logits: the readout's, [CLS] on ViViT), the last block is computed for those.
Same numbers up to float32 rounding (logits agree to ~1e-6; a percentage of a small clean-corrupt
difference, to ~1e-4 of its value, as between any two float32 implementations). Inputs: pixel
tensors of B clips, with a source cache of B clips (TransformerLens' batched convention); B = 1
is the fast case (one forward pass computes many patched runs side by side).

`generic_activation_patch` and the patch setters are TransformerLens' own interface: one forward
per index, resumed at the patched layer, with any setter.
"""

from __future__ import annotations

import csv
import itertools
import json
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import torch
from einops import rearrange
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vivit_lens.interp import memory
from vivit_lens.interp.generic_patching import (  # TransformerLens' generic interface, re-exported here as in TL
    _result_dtype, generic_activation_patch, get_act_patch_attn_head_pattern_dest_src_pos, get_act_patch_direct_path,
    get_act_patch_direct_path_all_sources, layer_head_dest_src_pos_pattern_patch_setter,
    layer_head_pattern_patch_setter, layer_head_pos_pattern_patch_setter, layer_head_vector_patch_setter,
    layer_pos_head_vector_patch_setter, layer_pos_patch_setter,
)  # fmt: skip
from vivit_lens.interp.metrics import Metric
from vivit_lens.models.utils import get_act_name, hook_layer, index_tuple, resume_hook

PositionSpec = Union[None, str, int, Sequence, Tensor, Mapping]
HeadSpec = Union[None, str, int, Sequence]


# Named results ----------------------------------------------------------------------------------
@dataclass
class LabeledTensor:
    """A tensor with named axes and a label per index on each axis; exports as a tidy table.

    `values[i, j, ...]` belongs to `labels[0][i]`, `labels[1][j]`, ...; `meta` holds context
    (metric, direction, baselines ...) that goes into `to_json` and `__repr__`.
    """

    values: Tensor
    axes: tuple[str, ...]
    labels: tuple[tuple, ...]
    name: str = "value"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.values.ndim != len(self.axes) or len(self.labels) != len(self.axes):
            raise ValueError(f"values {tuple(self.values.shape)}, axes {self.axes} and labels disagree in rank")
        for axis, lab, size in zip(self.axes, self.labels, self.values.shape):
            if len(lab) != size:
                raise ValueError(f"axis {axis!r} has {size} entries but {len(lab)} labels")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per entry: `{axis: label, ..., name: value}` (pandas: `pd.DataFrame(r.to_records())`)."""
        flat = self.values.detach().double().reshape(-1).tolist()
        records = []
        for k, idx in enumerate(itertools.product(*[range(n) for n in self.values.shape])):
            row = {axis: self.labels[a][i] for a, (axis, i) in enumerate(zip(self.axes, idx))}
            row[self.name] = flat[k]
            records.append(row)
        return records

    def to_csv(self, path: str | Path) -> None:
        records = self.to_records()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=[*self.axes, self.name])
            writer.writeheader()
            writer.writerows(records)

    def to_json(self, path: str | Path) -> None:
        meta = {k: (v if isinstance(v, (str, int, float, bool, type(None))) else repr(v)) for k, v in self.meta.items()}
        Path(path).write_text(json.dumps({"meta": meta, "records": self.to_records()}, indent=1))

    def __repr__(self) -> str:
        dims = " x ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape)) or "scalar"
        head = f"{type(self).__name__}({self.name}: {dims}"
        meta = ", ".join(f"{k}={_short(v)}" for k, v in self.meta.items())
        lines = [head + (f"; {meta}" if meta else "") + ")"]
        v = self.values.detach().float()
        if v.ndim == 0:
            lines.append(f"  {float(v):.4g}")
        elif v.ndim == 1:
            lines += [f"  {lab!s:>14}  {x:10.4g}" for lab, x in list(zip(self.labels[0], v.tolist()))[:24]]
            if v.shape[0] > 24:
                lines.append(f"  ... ({v.shape[0] - 24} more)")
        elif v.ndim == 2:
            cols = list(self.labels[1])[:12]
            corner = f"{self.axes[0]}/{self.axes[1]}"
            lines.append(f"  {corner:>14}" + "".join(f"{str(c)[:9]:>10}" for c in cols))
            for lab, row in list(zip(self.labels[0], v.tolist()))[:24]:
                lines.append(f"  {str(lab)[:14]:>14}" + "".join(f"{x:10.4g}" for x in row[:12]))
        return "\n".join(lines)


class PatchResult(LabeledTensor):
    """Patching results: the metric of each patched run, e.g. axes `("layer", "head")`.

    `meta` holds `act`, `metric`, `direction`, and the unpatched metric of both runs
    (`clean_metric`, `corrupt_metric`) when known.
    """


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) < 40 else s[:37] + "..."


# What to patch ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Patch:
    """One patch site: overwrite `hook` at `positions` (None: all) and `heads` (None: all) with the source run.

    Positions index the `pos` axis (`query_pos` for attention patterns/scores), heads the `head`
    axis; each may be an int, a sequence, a range or a tensor (stored as a tuple; `()`: nothing).
    """

    hook: str
    positions: int | Sequence[int] | Tensor | None = None
    heads: int | Sequence[int] | Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", index_tuple(self.positions))
        object.__setattr__(self, "heads", index_tuple(self.heads))

    @classmethod
    def at(cls, hook: str, positions: Any = None, heads: Any = None) -> Patch:
        """Same as `Patch(hook, positions, heads)`."""
        return cls(hook, positions, heads)


def frame_groups(model, include_cls: bool = False) -> dict[str, Tensor]:
    """Position groups, one per tubelet time: `{"t3": positions}` (the tokens of input frames `3*tt ...`).

    For `positions=` of the sweeps; `include_cls` adds `{"cls": [0]}` first (a model without [CLS]: a
    ValueError). Positions come from the token grid (`model.grid`).
    """
    grid = model.grid
    tt = grid.tubelet[0]
    groups = {"cls": torch.tensor([_cls_position(model)])} if include_cls else {}
    for t in range(grid.shape[0]):
        groups[f"t{t}"] = grid.positions(frames=range(t * tt, (t + 1) * tt))
    return groups


# The engine -------------------------------------------------------------------------------------


def _site_axes(axes: str) -> tuple[int | None, int | None]:
    names = axes.split()
    pos = names.index("pos") if "pos" in names else (names.index("query_pos") if "query_pos" in names else None)
    head = names.index("head") if "head" in names else None
    return pos, head


def site_mask(shape: Sequence[int], axes: str, positions: tuple[int, ...] | None,
              heads: tuple[int, ...] | None) -> Tensor:  # fmt: skip
    """Boolean mask (one example: no batch axis) selecting `positions` x `heads` of an activation.

    `axes` is the hook point's axis string (e.g. `"batch pos head d_head"`, `"batch head query_pos
    key_pos"`: positions index `pos`, or `query_pos`). The mask spans the axes up to the last of
    pos/head; later axes are size 1 (broadcast). None selects the whole axis, `()` nothing.
    """
    pos_axis, head_axis = _site_axes(axes)
    if positions is not None and pos_axis is None:
        raise ValueError(f"positions given for an activation without a position axis [{axes}]")
    if heads is not None and head_axis is None:
        raise ValueError(f"heads given for an activation without a head axis [{axes}]")
    last = max([a for a in (pos_axis, head_axis) if a is not None], default=0)
    mask = torch.ones([shape[a] for a in range(1, last + 1)], dtype=torch.bool)
    for a, sel in ((pos_axis, positions), (head_axis, heads)):
        if a is None or sel is None:
            continue
        if sel and (min(sel) < -shape[a] or max(sel) >= shape[a]):
            raise ValueError(f"indices {sel} out of range for axis {axes.split()[a]!r} of size {shape[a]}")
        keep = torch.zeros(shape[a], dtype=torch.bool)
        keep[list(sel)] = True
        mask = mask & keep.reshape([1] * (a - 1) + [shape[a]] + [1] * (last - a))
    return mask.reshape(list(mask.shape) + [1] * (len(shape) - last - 1))


def _score(metric, out: Tensor, runs: int, batch: int = 1) -> Tensor:
    """`_score_runs`, refusing a NaN or inf metric value (it would pass into every map and report unnoticed)."""
    values = _score_runs(metric, out, runs, batch)
    if values.device.type != "meta" and not bool(torch.isfinite(values).all()):
        bad = torch.nonzero(~torch.isfinite(values)).reshape(-1).tolist()
        raise ValueError(f"metric {_metric_name(metric)} returned NaN or inf for patched run(s) {bad[:10]} of {runs}: "
                         f"check it on the clean and corrupt logits (a zero clean - corrupt gap divides by zero)")
    return values


def _score_runs(metric, out: Tensor, runs: int, batch: int = 1) -> Tensor:
    """One metric value per patched run, `[runs]`; `out` holds the runs' `batch` rows each, run-major.

    A `Metric` scores each example (batched over every run at once when `batch` is 1) and a run
    gets the mean over its examples. A plain callable follows TransformerLens: it is called once
    per run, on that run's whole batch (`[batch n_classes]` logits), and returns a scalar.
    """
    if isinstance(metric, Metric) or hasattr(metric, "reads"):
        if batch == 1:
            values = metric(out)
            if values.shape != (runs,):
                raise ValueError(f"metric {type(metric).__name__} returned shape {tuple(values.shape)}, "
                                 f"expected ({runs},)")  # fmt: skip
            return values.detach()
        return torch.stack([metric(out[r * batch:(r + 1) * batch]).detach().mean() for r in range(runs)])
    values = []
    for r in range(runs):
        v = torch.as_tensor(metric(out[r * batch:(r + 1) * batch]))
        if v.numel() != 1:
            raise ValueError(
                f"patching_metric {_metric_name(metric)} returned shape {tuple(v.shape)}; as in TransformerLens it is "
                f"called on the patched logits of the whole batch ({batch} clips) and must return a scalar"
            )
        values.append(v.detach().reshape(()))
    return torch.stack(values)


def _batch_of(x: Tensor, what: str) -> int:
    if not isinstance(x, Tensor) or x.ndim == 0 or x.shape[0] < 1:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{what} must be a batch of clips [batch frames channels height width], got {got}")
    return x.shape[0]


def _scalar(t: Tensor) -> float:
    """A metric value for `meta`: a float, or NaN on the `meta` device (whose tensors hold no values)."""
    return float("nan") if t.device.type == "meta" else float(t)


def _tile(t: Tensor, runs: int) -> Tensor:
    """`[batch ...]` repeated for `runs` patched runs, run-major: a view for batch 1."""
    if t.shape[0] == 1:
        return t.expand(runs, *t.shape[1:])
    return t.repeat(runs, *[1] * (t.ndim - 1))


def run_patches(
    model,
    target_input: Tensor,
    source: Mapping[str, Tensor],
    patches: Sequence[Patch | Sequence[Patch]],
    metric: Metric | Callable,
    *,
    batch_size: int = 16,
    progress: bool = True,
    fast: bool = True,
    desc: str = "patching",
) -> Float[Tensor, "patch"]:
    """The metric of one patched run per entry of `patches`, each run on `target_input`.

    Each entry is a `Patch` or a sequence of `Patch`es applied together; a patched activation is
    `where(site, source[hook], target activation)`, with `source` an ActivationCache (or dict) of
    the run whose values are patched in. `target_input` is a batch of B clips and `source` holds
    B clips too (or one, used for all): every patched run patches the whole batch, example i from
    source example i, as TransformerLens does; see `_score` for how a run's metric is taken. Runs are grouped by the layer they resume from
    and batched `batch_size` at a time; results come back in the order of `patches`. Hooks the
    caller attached to the model stay active (and turn the `fast` shortcuts off).
    """
    memory.guard_patching(model, target_input, batch_size, patches, source)
    return _run_patches(model, target_input, source, patches, metric, batch_size=batch_size, progress=progress,
                        fast=fast, desc=desc)[0]  # fmt: skip


def _run_patches(model, target_input, source, patches, metric, *, batch_size, progress, fast, desc):
    """`run_patches`, plus the metric of the unpatched target run (a by-product of its cache run)."""
    B = _batch_of(target_input, "target_input")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    runs = [(p,) if isinstance(p, Patch) else tuple(p) for p in patches]
    n = model.cfg.n_layers
    reads = getattr(metric, "reads", None)
    for run in runs:
        if not run or not all(isinstance(s, Patch) for s in run):
            raise ValueError(f"each patch must be a Patch or a non-empty sequence of Patches, got {run!r}")
        for site in run:
            hp = model._hook_point(site.hook)
            if site.hook not in source:
                raise KeyError(f"the source cache has no {site.hook!r}; cache it (names_filter) before patching")
            if source[site.hook].shape[0] not in (1, B):
                raise ValueError(f"the source cache must hold {B} clip(s) like the patched input (or one); "
                                 f"{site.hook} is {tuple(source[site.hook].shape)}")  # fmt: skip
            site_mask(source[site.hook].shape, hp.axes, site.positions, site.heads)  # validates the indices
    if reads is not None:
        model._hook_point(reads)
    fast = fast and not any(hp.has_hooks for hp in model.hook_dict.values())
    read_layer = hook_layer(reads, n) if reads is not None else n
    plans = [_plan(run, model, read_layer, metric, fast) for run in runs]
    names = {resume_hook(p.start, n) for p in plans if p.start is not None}
    names |= {f"blocks.{p.start}.attn.hook_z" for p in plans if p.after_attn}
    if reads is not None:
        names.add(reads)
    with torch.no_grad():
        out, target = model.run_with_cache(target_input, names_filter=sorted(names))
    target_metric = _scalar(_score(metric, out if reads is None else target[reads], 1, B)[0])
    values = torch.empty(len(runs), dtype=_result_dtype(model), device=model.cfg.device)
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, p in enumerate(plans):
        groups[(-1 if p.start is None else p.start, p.after_attn, p.tail_positions or ())].append(i)
    chunks = [(key, idx[k:k + batch_size]) for key, idx in sorted(groups.items()) for k in range(0, len(idx), batch_size)]
    for (start, after_attn, tail), idx in tqdm(chunks, desc=desc, disable=not progress, leave=False):
        values[idx] = _run_chunk(model, target_input, target, source, [runs[i] for i in idx], metric,
                                 None if start < 0 else start, after_attn, tail or None).to(values)  # fmt: skip
    return values, target_metric


@dataclass(frozen=True)
class _Plan:
    start: int | None  # layer to resume from (None: from pixels)
    after_attn: bool  # resume after the attention of `start` (head-output patches only)
    tail_positions: tuple[int, ...] | None  # compute the last block only at these positions


def _plan(run: tuple[Patch, ...], model, read_layer: int, metric, fast: bool) -> _Plan:
    n = model.cfg.n_layers
    layers = [hook_layer(s.hook, n) for s in run]
    start = None if any(l is None for l in layers) else min(layers + [read_layer])
    after_attn = (
        fast and start is not None and start < n and start < read_layer
        and all(s.hook == f"blocks.{start}.attn.hook_z" for s in run)
    )  # fmt: skip
    tail = None
    if fast and not any(l is not None and l >= n - 1 for l in layers):
        reads = getattr(metric, "reads", None)
        if reads is None and isinstance(metric, Metric):
            tail = tuple(model.readout_positions)  # the logits read only these (ViViT: [CLS])
        elif reads == f"blocks.{n - 1}.hook_resid_post" and hasattr(metric, "positions"):
            tail = tuple(sorted({int(p) % model.cfg.n_pos for p in metric.positions}))
    return _Plan(start, after_attn, tail)


def _patch_fn(sites: list[tuple[int, Patch]], runs: int, src: Tensor, axes: str):
    """One hook for a whole chunk of `runs` runs (each `batch` rows, run-major): run i gets its own sites."""
    shape = src.shape
    mask = torch.zeros(runs, *site_mask(shape, axes, None, None).shape, dtype=torch.bool)
    for run, site in sites:
        mask[run] |= site_mask(shape, axes, site.positions, site.heads)

    def fn(act: Tensor, hook) -> Tensor:
        if act.shape[1:] != shape[1:]:
            raise ValueError(f"source activation {hook.name} is {tuple(shape)}, the patched run's is {tuple(act.shape)}")
        per_run = act.reshape(runs, act.shape[0] // runs, *act.shape[1:])  # [run batch ...]
        patched = torch.where(mask.to(act.device).unsqueeze(1), src.to(act).unsqueeze(0), per_run)
        return patched.reshape(act.shape)

    return fn


def _run_chunk(model, pixels, target, source, chunk, metric, start, after_attn, tail) -> Tensor:
    n, rows, B = model.cfg.n_layers, len(chunk), pixels.shape[0]
    by_hook: dict[str, list[tuple[int, Patch]]] = defaultdict(list)
    for row, run in enumerate(chunk):
        for site in run:
            by_hook[site.hook].append((row, site))
    reads = getattr(metric, "reads", None)
    captured: dict[str, Tensor] = {}

    def capture(t: Tensor, hook) -> None:
        captured["act"] = t

    hooks = [(h, _patch_fn(sites, rows, source[h], model.hook_dict[h].axes)) for h, sites in by_hook.items()]
    if reads is not None:
        hooks.append((reads, capture))
    read_layer = hook_layer(reads, n) if reads is not None else n
    stop = read_layer + 1 if reads is not None and read_layer < n else None
    with torch.no_grad(), model.hooks(hooks):
        if start is None:
            x = _tile(pixels, rows)
        else:
            x = _tile(target[resume_hook(start, n)], rows)
        if after_attn:
            z = _tile(target[f"blocks.{start}.attn.hook_z"], rows)
            block = model.blocks[start]  # a head-output patch cannot change q, k or v: only o_proj onward
            x = block.finish(x, block.attn.from_z(z))
            start += 1
        if tail is not None:
            last = n - 1 if stop is None else stop - 1
            resid = model(x, start_at_layer=start, stop_at_layer=last) if start is not None else model(x, stop_at_layer=last)
            out = _last_block_at(model, resid, tail, reads is None)
        elif start is None:
            out = model(x, stop_at_layer=stop) if stop is not None else model(x)
        else:
            out = model(x, start_at_layer=start, stop_at_layer=stop) if stop is not None else model(x, start_at_layer=start)
    if reads is not None and tail is None:
        out = captured["act"]
    return _score(metric, out, rows, B)


def _last_block_at(model, resid_pre: Tensor, positions: tuple[int, ...], logits: bool) -> Tensor:
    """The last block's output at `positions` only (queries there, keys/values everywhere), exactly.

    Returns logits when `logits` (positions = `model.readout_positions`), else the final residual
    `[batch pos d_model]` with NaN at the positions not computed (a metric reading them would show it).
    """
    resid_post = model.blocks[-1].at_positions(resid_pre, positions)["hook_resid_post"]
    if logits:
        return model.unembed(model.readout(resid_post))
    full = resid_pre.new_full(resid_pre.shape, float("nan"))
    full[:, list(positions)] = resid_post
    return full


# Sweeps -----------------------------------------------------------------------------------------
_HEAD_ACTS = {"q", "k", "v", "z", "result", "pattern", "attn_scores", "q_input", "k_input", "v_input"}


def _cls_position(model) -> int:
    """The [CLS] token's position; a ValueError naming what there is instead for a model without one."""
    cls = model.grid.cls
    if cls is None:
        raise ValueError(f"{type(model).__name__} has no [CLS] token; use 'readout' (the positions its classifier "
                         f"reads, {_short(model.readout_positions)}) or token positions from model.grid")  # fmt: skip
    return cls


def _position_groups(positions: PositionSpec, model) -> tuple[str | None, list, list]:
    """(axis name or None, labels, groups) for a position spec."""
    n_pos = model.cfg.n_pos
    if isinstance(positions, str):
        if positions == "all":
            return None, [None], [None]
        if positions in ("each", "pos"):
            return "pos", list(range(n_pos)), [(p,) for p in range(n_pos)]
        if positions == "cls":
            return None, ["cls"], [(_cls_position(model),)]
        if positions == "readout":
            return None, ["readout"], [tuple(model.readout_positions)]
        if positions == "frames":
            g = frame_groups(model)
            return "frame", list(g), [index_tuple(v) for v in g.values()]
        raise ValueError(f"positions must be 'all', 'each', 'cls', 'readout', 'frames', groups or indices; "
                         f"got {positions!r}")  # fmt: skip
    if positions is None:
        return "pos", list(range(n_pos)), [(p,) for p in range(n_pos)]
    if isinstance(positions, Mapping):
        return "group", [str(k) for k in positions], [index_tuple(v) for v in positions.values()]
    if isinstance(positions, int):
        return None, [str(positions)], [(positions,)]
    if isinstance(positions, Tensor) and positions.ndim <= 1:
        return None, ["positions"], [index_tuple(positions)]
    items = list(positions)
    if all(isinstance(p, int) for p in items):
        return None, ["positions"], [index_tuple(items)]
    groups = [index_tuple(p) for p in items]
    return "group", [f"g{i}" for i in range(len(groups))], groups


def _head_groups(heads: HeadSpec, n_heads: int) -> tuple[str | None, list, list]:
    if heads is None or heads == "all":
        return None, [None], [None]
    if heads == "each":
        return "head", list(range(n_heads)), [(h,) for h in range(n_heads)]
    if isinstance(heads, int):
        return None, [heads], [(heads,)]
    items = list(heads)
    if all(isinstance(h, int) for h in items):
        return None, ["heads"], [index_tuple(items)]
    groups = [index_tuple(h) for h in items]
    return "heads", ["+".join(map(str, g)) for g in groups], groups


def _hook_template(act: str, layer: int | None) -> str:
    if act in ("embed", "pos_embed"):
        return f"hook_{act}"
    return get_act_name(act, layer)


def _sweep(model, target_input, source, metric, act: str, *, layers, heads, positions, order, batch_size,
           progress, fast) -> PatchResult:  # fmt: skip
    layered = act not in ("embed", "pos_embed")
    layer_list = _layer_list(layers, model.cfg.n_layers) if layered else [None]
    if heads is not None and act not in _HEAD_ACTS:
        raise ValueError(f"heads= needs a per-head activation ({sorted(_HEAD_ACTS)}), got act={act!r}")
    pos_axis, pos_labels, pos_groups = _position_groups(positions, model)
    head_axis, head_labels, head_groups = _head_groups(heads, model.cfg.n_heads)
    axes = {"layer": ("layer" if layered else None, layer_list, layer_list),
            "pos": (pos_axis, pos_labels, pos_groups), "head": (head_axis, head_labels, head_groups)}  # fmt: skip
    order = [k for k in order if axes[k][0] is not None]
    patches, keys = [], itertools.product(*[range(len(axes[k][2])) for k in order])
    for key in keys:
        pick = {k: axes[k][2][i] for k, i in zip(order, key)}
        layer = pick.get("layer", layer_list[0])
        pos = pick.get("pos", pos_groups[0])
        head = pick.get("head", head_groups[0])
        patches.append(Patch(_hook_template(act, layer), pos, head))
    values, target_metric = _run_patches(model, target_input, source, patches, metric, batch_size=batch_size,
                                         progress=progress, fast=fast, desc=f"patching {act}")  # fmt: skip
    shape = [len(axes[k][2]) for k in order]
    meta = {"act": act, "metric": _metric_name(metric), "target_metric": target_metric}
    return PatchResult(values.reshape(shape), tuple(axes[k][0] for k in order), tuple(tuple(axes[k][1]) for k in order),
                       name="metric", meta=meta)  # fmt: skip


def _layer_list(layers, n: int) -> list[int]:
    out = list(range(n)) if layers is None else [int(l) for l in ([layers] if isinstance(layers, int) else layers)]
    bad = [l for l in out if not 0 <= l < n]
    if bad:
        raise ValueError(f"layers {bad} out of range [0, {n})")
    return out


def _metric_name(metric) -> str:
    return type(metric).__name__ if isinstance(metric, Metric) else getattr(metric, "__name__", repr(metric))


def patch_sweep(
    model,
    clean_input: Tensor,
    corrupted_input: Tensor,
    metric: Metric | Callable,
    act: str = "z",
    *,
    layers: int | Sequence[int] | None = None,
    heads: HeadSpec = None,
    positions: PositionSpec = "all",
    direction: str = "denoising",
    batch_size: int = 16,
    progress: bool = True,
    fast: bool = True,
) -> PatchResult:
    """Patch activation `act` of every layer (or `layers`), one run per (layer, position group, head group).

    `act`: a short name (`resid_pre`, `resid_mid`, `attn_out`, `mlp_out`, `z` (head output), `q`,
    `k`, `v`, `pattern`, `result`, `post` (MLP neurons), `embed` ...). `heads`: None (the whole
    activation), `"each"` (axis `head`), an int or list of ints (one group), or a list of groups
    (axis `heads`). `positions`: `"all"` (default), `"each"`/None (axis `pos`), `"cls"` ([CLS] only; a
    model without one: a ValueError), `"readout"` (the positions the classifier reads), `"frames"`
    (axis `frame`, one group per tubelet time), an int, a list/tensor of positions (one group), a
    list of groups or a `{name: positions}` dict (axis `group`); for `pattern` they are query
    positions. Axes come in the order layer, position, head.

    `direction="denoising"`: run `corrupted_input`, patch in clean activations. `"noising"`: run
    `clean_input`, patch in corrupt ones. `meta` gets both unpatched metrics.
    """
    memory.guard_patching(model, corrupted_input, batch_size, act)
    if direction not in ("denoising", "noising"):
        raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    if _batch_of(clean_input, "clean_input") != _batch_of(corrupted_input, "corrupted_input"):
        raise ValueError(f"clean_input and corrupted_input hold different numbers of clips: "
                         f"{clean_input.shape[0]} and {corrupted_input.shape[0]}")  # fmt: skip
    target, src_input = (corrupted_input, clean_input) if direction == "denoising" else (clean_input, corrupted_input)
    layered = act not in ("embed", "pos_embed")
    hooks = [_hook_template(act, l) for l in (_layer_list(layers, model.cfg.n_layers) if layered else [None])]
    reads = getattr(metric, "reads", None)
    with torch.no_grad():
        src_out, source = model.run_with_cache(src_input, names_filter=sorted(set(hooks) | ({reads} - {None})))
    src_metric = _scalar(_score(metric, src_out if reads is None else source[reads], 1, src_input.shape[0])[0])
    result = _sweep(model, target, source, metric, act, layers=layers, heads=heads, positions=positions,
                    order=("layer", "pos", "head"), batch_size=batch_size, progress=progress, fast=fast)  # fmt: skip
    tgt_metric = result.meta.pop("target_metric")
    clean_m, corrupt_m = (src_metric, tgt_metric) if direction == "denoising" else (tgt_metric, src_metric)
    result.meta.update(direction=direction, clean_metric=clean_m, corrupt_metric=corrupt_m)
    return result


# TransformerLens-compatible entry points --------------------------------------------------------
_TL_DOC = """TransformerLens `{name}`: run `corrupted_tokens`, patch in `clean_cache`'s {what}, return the metric.

    Arguments as in TransformerLens: `(model, corrupted_tokens, clean_cache, patching_metric)`,
    by position or by keyword (`corrupted_input=` is accepted for `corrupted_tokens`). The
    corrupted input is a batch of B clips and `clean_cache` holds B clips; `patching_metric` is
    called on the patched `[B, n_classes]` logits and returns a scalar (or is a `Metric`, averaged
    over the batch). Returns a plain tensor `[{shape}]` as TransformerLens does
    (`return_result=True`: the PatchResult with axis labels). `positions` (by-position variants):
    None = every position (TransformerLens), or `"all"`, `"cls"`, `"readout"`, `"frames"`, groups, a dict (see
    `patch_sweep`). For noising, call with the clean input and the corrupt cache. `batch_size`,
    `progress`, `fast`: see `run_patches`.
"""


def _tl_args(corrupted_tokens, clean_cache, patching_metric, corrupted_input, name: str):
    if corrupted_input is not None:
        if corrupted_tokens is not None:
            raise TypeError(f"{name}: pass corrupted_tokens or corrupted_input, not both")
        corrupted_tokens = corrupted_input
    missing = [n for n, v in (("corrupted_tokens", corrupted_tokens), ("clean_cache", clean_cache),
                              ("patching_metric", patching_metric)) if v is None]  # fmt: skip
    if missing:
        raise TypeError(f"{name}() missing required argument(s): {', '.join(missing)}")
    return corrupted_tokens, clean_cache, patching_metric


def _tl(name: str, act: str, order: tuple[str, ...], heads, default_positions, what: str, shape: str):
    def entry(model, corrupted_tokens: Tensor | None = None, clean_cache: Mapping[str, Tensor] | None = None,
              patching_metric=None, *, corrupted_input: Tensor | None = None, positions: PositionSpec = default_positions,
              layers=None, batch_size: int = 16, progress: bool = True, fast: bool = True,
              return_result: bool = False):  # fmt: skip
        x, cache, metric = _tl_args(corrupted_tokens, clean_cache, patching_metric, corrupted_input, name)
        memory.guard_patching(model, x, batch_size, act, cache)
        res = _sweep(model, x, cache, metric, act, layers=layers, heads=heads, positions=positions, order=order,
                     batch_size=batch_size, progress=progress, fast=fast)  # fmt: skip
        res.meta["direction"] = "denoising"
        return res if return_result else res.values

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = _TL_DOC.format(name=name, what=what, shape=shape)
    return entry


_BY_POS, _HEAD_BY_POS, _HEAD_ALL = ("layer", "pos"), ("layer", "pos", "head"), ("layer", "head")
get_act_patch_resid_pre = _tl("get_act_patch_resid_pre", "resid_pre", _BY_POS, None, None,
                              "residual stream at each block's input", "layer pos")  # fmt: skip
get_act_patch_resid_mid = _tl("get_act_patch_resid_mid", "resid_mid", _BY_POS, None, None,
                              "residual stream between attention and MLP", "layer pos")  # fmt: skip
get_act_patch_attn_out = _tl("get_act_patch_attn_out", "attn_out", _BY_POS, None, None,
                             "attention layer outputs", "layer pos")  # fmt: skip
get_act_patch_mlp_out = _tl("get_act_patch_mlp_out", "mlp_out", _BY_POS, None, None, "MLP outputs", "layer pos")
get_act_patch_attn_head_out_all_pos = _tl("get_act_patch_attn_head_out_all_pos", "z", _HEAD_ALL, "each", "all",
                                          "head outputs (hook_z, every position)", "layer head")  # fmt: skip
get_act_patch_attn_head_out_by_pos = _tl("get_act_patch_attn_head_out_by_pos", "z", _HEAD_BY_POS, "each", None,
                                         "head outputs (hook_z) by position", "layer pos head")  # fmt: skip
get_act_patch_attn_head_q_all_pos = _tl("get_act_patch_attn_head_q_all_pos", "q", _HEAD_ALL, "each", "all",
                                        "head queries (every position)", "layer head")  # fmt: skip
get_act_patch_attn_head_q_by_pos = _tl("get_act_patch_attn_head_q_by_pos", "q", _HEAD_BY_POS, "each", None,
                                       "head queries by position", "layer pos head")  # fmt: skip
get_act_patch_attn_head_k_all_pos = _tl("get_act_patch_attn_head_k_all_pos", "k", _HEAD_ALL, "each", "all",
                                        "head keys (every position)", "layer head")  # fmt: skip
get_act_patch_attn_head_k_by_pos = _tl("get_act_patch_attn_head_k_by_pos", "k", _HEAD_BY_POS, "each", None,
                                       "head keys by position", "layer pos head")  # fmt: skip
get_act_patch_attn_head_v_all_pos = _tl("get_act_patch_attn_head_v_all_pos", "v", _HEAD_ALL, "each", "all",
                                        "head values (every position)", "layer head")  # fmt: skip
get_act_patch_attn_head_v_by_pos = _tl("get_act_patch_attn_head_v_by_pos", "v", _HEAD_BY_POS, "each", None,
                                       "head values by position", "layer pos head")  # fmt: skip
get_act_patch_attn_head_pattern_all_pos = _tl("get_act_patch_attn_head_pattern_all_pos", "pattern", _HEAD_ALL, "each",
                                              "all", "attention patterns (every query)", "layer head")  # fmt: skip
get_act_patch_attn_head_pattern_by_pos = _tl("get_act_patch_attn_head_pattern_by_pos", "pattern",
                                             ("layer", "head", "pos"), "each", None,
                                             "attention patterns by query position", "layer head dest_pos")  # fmt: skip


def get_act_patch_attn_head_all_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs) -> Tensor:
    """`[5 layer head]`: head output, q, k, v and pattern patching (all positions), as in TransformerLens."""
    fns = (get_act_patch_attn_head_out_all_pos, get_act_patch_attn_head_q_all_pos, get_act_patch_attn_head_k_all_pos,
           get_act_patch_attn_head_v_all_pos, get_act_patch_attn_head_pattern_all_pos)  # fmt: skip
    return torch.stack([f(model, corrupted_tokens, clean_cache, metric, **kwargs) for f in fns])


def get_act_patch_attn_head_by_pos_every(model, corrupted_tokens, clean_cache, metric, **kwargs) -> Tensor:
    """`[5 layer pos head]`: head output, q, k, v and pattern patching by position, as in TransformerLens."""
    fns = (get_act_patch_attn_head_out_by_pos, get_act_patch_attn_head_q_by_pos, get_act_patch_attn_head_k_by_pos,
           get_act_patch_attn_head_v_by_pos)  # fmt: skip
    out = [f(model, corrupted_tokens, clean_cache, metric, **kwargs) for f in fns]
    pattern = get_act_patch_attn_head_pattern_by_pos(model, corrupted_tokens, clean_cache, metric, **kwargs)
    return torch.stack(out + [rearrange(pattern, "layer head pos -> layer pos head")])


def get_act_patch_block_every(model, corrupted_tokens, clean_cache, metric, **kwargs) -> Tensor:
    """`[3 layer pos]`: resid_pre, attn_out and mlp_out patching by position, as in TransformerLens."""
    fns = (get_act_patch_resid_pre, get_act_patch_attn_out, get_act_patch_mlp_out)
    return torch.stack([f(model, corrupted_tokens, clean_cache, metric, **kwargs) for f in fns])


__all__ = [
    "LabeledTensor", "Patch", "PatchResult", "frame_groups", "patch_sweep", "run_patches", "site_mask",
    "get_act_patch_resid_pre", "get_act_patch_resid_mid", "get_act_patch_attn_out", "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_all_pos", "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_all_pos", "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_all_pos", "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_all_pos", "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_pattern_all_pos", "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_all_pos_every", "get_act_patch_attn_head_by_pos_every", "get_act_patch_block_every",
    "generic_activation_patch", "get_act_patch_attn_head_pattern_dest_src_pos", "get_act_patch_direct_path",
    "get_act_patch_direct_path_all_sources", "layer_head_dest_src_pos_pattern_patch_setter",
    "layer_head_pattern_patch_setter", "layer_head_pos_pattern_patch_setter", "layer_head_vector_patch_setter",
    "layer_pos_head_vector_patch_setter", "layer_pos_patch_setter",
]  # fmt: skip
