"""Exact path patching: through which residual-stream paths a component's change reaches the output.

A *sender* (attention head, MLP or the embeddings, optionally at some token positions) writes into
the residual stream; a *receiver* reads it: the query/key/value input of a later head
(`hook_q_input` ...), the input of a later MLP (`hook_mlp_in`), or the final residual at the positions
the readout reads (`model.readout_positions`: [CLS] on ViViT, every token for a mean-pooled VideoMAE). Path patching gives the senders their *source* values and
lets that change reach the receivers only along the direct residual path: every other component
is frozen at its value in the *reference* run. The receivers are then set to those values and
everything downstream of them is recomputed (Wang et al. 2022; Goldowsky-Dill et al. 2023).

Conventions. `direction="denoising"` (default): reference = corrupt run, senders take their
clean values. `direction="noising"`: reference = clean run, senders take their corrupt values.
Every number returned is an *effect*: metric(patched run) - metric(reference run), averaged over
the batch. With `freeze=False` nothing is frozen: the receivers get the values of a run with only
the senders patched (all paths from sender to receiver, the total effect for the final residual).

LayerNorm. A receiver recomputes the LayerNorm in front of it from the residual it is given: a
head's q/k/v input is normalised on its own (the split ln1 of `hook_{q,k,v}_input`, so that one head's
input can differ from its neighbours'), an MLP input by its ln2, the final residual by ln_final. The
path's effect therefore includes the change of that LayerNorm's scale. Direct logit attribution
(`ActivationCache.logit_attrs`, and `attribution` into `FinalResid`) freezes the final scale at its
reference value instead: the two agree to first order, and differ where a sender changes the norm
of the residual a receiver reads.

Metrics: a `vivit_lens.metrics.Metric` (one value per clip), or a TransformerLens-style callable on
the `[batch n_classes]` logits returning one number for the batch (its value is then every clip's).

    pp = PathPatcher(model, clean, corrupt, Logit(31))
    pp.patch(Head(9, 3), FinalResid())                  # scalar: the direct effect of head 9.3 on the logit
    pp.senders_into(MLPInput(10)).heads()               # [layer head]: every head's path into MLP 10
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import torch
from einops import einsum
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from vivit_lens.interp.metrics import Metric, metric_kind
from vivit_lens.models.utils import index_tuple

Direction = str  # "denoising" or "noising"
Positions = Union[int, Sequence[int], None]


class ReadoutPositions(tuple):
    """The positions the model's readout reads, whatever the model (`cfg.readout_positions`, resolved by the
    patchers with `node_positions`). As a tuple it is ViViT's, `(0,)` ([CLS]); it equals only itself."""

    def __eq__(self, other) -> bool:
        return isinstance(other, ReadoutPositions)

    def __ne__(self, other) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash("ReadoutPositions")

    def __repr__(self) -> str:
        return "READOUT"


READOUT = ReadoutPositions((0,))  # FinalResid's default positions


# Nodes -------------------------------------------------------------------------------------------
def _pos_suffix(p: tuple[int, ...] | None) -> str:
    return "" if p is None else "@" + ",".join(map(str, p))


class _AtPositions:
    """Nodes restricted to token positions: `positions` held as a tuple of ints (None: all)."""

    def __post_init__(self) -> None:
        if isinstance(self.positions, str) and self.positions == "readout":
            object.__setattr__(self, "positions", READOUT)
        elif not isinstance(self.positions, ReadoutPositions):
            object.__setattr__(self, "positions", index_tuple(self.positions))


def node_positions(node, cfg) -> tuple[int, ...] | None:
    """A node's token positions on a model of config `cfg` (None: all): `READOUT` is `cfg.readout_positions`."""
    positions = node.positions
    return tuple(cfg.readout_positions) if isinstance(positions, ReadoutPositions) else positions


@dataclass(frozen=True)
class Head(_AtPositions):
    """Sender: attention head `head` of block `layer` (its output `z_h @ W_O[h]`), at `positions` (None: all)."""

    layer: int
    head: int
    positions: Positions = None

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}{_pos_suffix(self.positions)}"


@dataclass(frozen=True)
class MLP(_AtPositions):
    """Sender: the MLP of block `layer` (`hook_mlp_out`), at `positions` (None: all)."""

    layer: int
    positions: Positions = None

    @property
    def name(self) -> str:
        return f"MLP{self.layer}{_pos_suffix(self.positions)}"


@dataclass(frozen=True)
class Embed(_AtPositions):
    """Sender: the token embedding plus position embedding (`hook_embed + hook_pos_embed`)."""

    positions: Positions = None

    @property
    def name(self) -> str:
        return f"Embed{_pos_suffix(self.positions)}"


@dataclass(frozen=True)
class HeadInput(_AtPositions):
    """Receiver: the query, key or value input of one head (`blocks.{layer}.hook_{kind}_input[:, :, head]`)."""

    layer: int
    head: int
    kind: str  # "q", "k" or "v"
    positions: Positions = None

    def __post_init__(self) -> None:
        if self.kind not in ("q", "k", "v"):
            raise ValueError(f"HeadInput kind must be 'q', 'k' or 'v', got {self.kind!r}")
        super().__post_init__()

    @property
    def name(self) -> str:
        return f"L{self.layer}H{self.head}.{self.kind}{_pos_suffix(self.positions)}"


@dataclass(frozen=True)
class MLPInput(_AtPositions):
    """Receiver: the residual going into the MLP of block `layer` (`blocks.{layer}.hook_mlp_in`)."""

    layer: int
    positions: Positions = None

    @property
    def name(self) -> str:
        return f"MLP{self.layer}.in{_pos_suffix(self.positions)}"


@dataclass(frozen=True)
class FinalResid(_AtPositions):
    """Receiver: the residual after the last block, at the positions the readout reads by default (`READOUT`,
    or `"readout"`: the model's `readout_positions`, [CLS] on ViViT; the readout's norm and the classifier follow).

    Its name keeps ViViT's `Final[CLS]` for the readout on every architecture."""

    positions: Positions | str = READOUT

    @property
    def name(self) -> str:
        readout = isinstance(self.positions, ReadoutPositions) or self.positions == (0,)
        return "Final" + ("[CLS]" if readout else _pos_suffix(self.positions))


Sender = Union[Head, MLP, Embed]
Receiver = Union[HeadInput, MLPInput, FinalResid]


def reaches(sender: Sender, receiver: Receiver) -> bool:
    """Whether the sender writes to the residual stream before the receiver reads it."""
    if isinstance(receiver, FinalResid) or isinstance(sender, Embed):
        return True
    if isinstance(sender, Head) and isinstance(receiver, MLPInput):
        return sender.layer <= receiver.layer
    return sender.layer < receiver.layer


def all_senders(cfg, which: str = "all", positions: Positions = None) -> list[Sender]:
    """Every sender of a kind (`"all"`, `"heads"`, `"mlps"`, `"embed"`), in forward order."""
    if which not in ("all", "heads", "mlps", "embed"):
        raise ValueError(f"senders must be 'all', 'heads', 'mlps', 'embed' or a list of nodes, got {which!r}")
    out: list[Sender] = [Embed(positions)] if which in ("all", "embed") else []
    for layer in range(cfg.n_layers):
        if which in ("all", "heads"):
            out += [Head(layer, h, positions) for h in range(cfg.n_heads)]
        if which in ("all", "mlps"):
            out.append(MLP(layer, positions))
    return out


def all_receivers(cfg, which: str = "all") -> list[Receiver]:
    """Every receiver of a kind (`"all"`, `"heads"` = q/k/v inputs, `"mlps"`, `"final"`), in forward order."""
    if which not in ("all", "heads", "mlps", "final"):
        raise ValueError(f"receivers must be 'all', 'heads', 'mlps', 'final' or a list of nodes, got {which!r}")
    out: list[Receiver] = []
    for layer in range(cfg.n_layers):
        if which in ("all", "heads"):
            out += [HeadInput(layer, h, k) for k in ("q", "k", "v") for h in range(cfg.n_heads)]
        if which in ("all", "mlps"):
            out.append(MLPInput(layer))
    if which in ("all", "final"):
        out.append(FinalResid())
    return out


def check_nodes(cfg, nodes: Sequence, role: str) -> None:
    """ValueError for a node that the model does not have (before any compute)."""
    kinds = (Head, MLP, Embed) if role == "sender" else (HeadInput, MLPInput, FinalResid)
    for node in nodes:
        if not isinstance(node, kinds):
            names = ", ".join(k.__name__ for k in kinds)
            raise ValueError(f"a {role} must be one of {names}, got {node!r}")
        layer = getattr(node, "layer", 0)
        if not 0 <= layer < cfg.n_layers:
            raise ValueError(f"{role} {node!r}: layer must be in [0, {cfg.n_layers}), got {layer}")
        head = getattr(node, "head", 0)
        if not 0 <= head < cfg.n_heads:
            raise ValueError(f"{role} {node!r}: head must be in [0, {cfg.n_heads}), got {head}")
        positions = node_positions(node, cfg)
        if positions is not None and (not positions or not all(0 <= p < cfg.n_pos for p in positions)):
            raise ValueError(f"{role} {node!r}: positions must be a non-empty list in [0, {cfg.n_pos})")


def source_hook(receiver: Receiver, n_layers: int) -> str:
    """The residual hook whose value a receiver reads when nothing is split (its reference input)."""
    if isinstance(receiver, HeadInput):
        return f"blocks.{receiver.layer}.hook_resid_pre"
    if isinstance(receiver, MLPInput):
        return f"blocks.{receiver.layer}.hook_resid_mid"
    return f"blocks.{n_layers - 1}.hook_resid_post"


def receiver_hook(receiver: Receiver, n_layers: int) -> str:
    """The hook at which a receiver's input is set."""
    if isinstance(receiver, HeadInput):
        return f"blocks.{receiver.layer}.hook_{receiver.kind}_input"
    if isinstance(receiver, MLPInput):
        return f"blocks.{receiver.layer}.hook_mlp_in"
    return f"blocks.{n_layers - 1}.hook_resid_post"


def _receiver_layer(receiver: Receiver, n_layers: int) -> int:
    return n_layers if isinstance(receiver, FinalResid) else receiver.layer


def _index(positions: tuple[int, ...] | None):
    return slice(None) if positions is None else torch.tensor(positions)


def _mask(x: Tensor, positions: tuple[int, ...] | None) -> Tensor:
    """`x [batch pos ...]` with every position outside `positions` zeroed."""
    if positions is None:
        return x
    keep = torch.zeros(x.shape[1], dtype=x.dtype, device=x.device)
    keep[list(positions)] = 1
    return x * keep.view(1, -1, *[1] * (x.ndim - 2))


def write_delta(
    model, src: Mapping[str, Tensor], ref: Mapping[str, Tensor] | None, sender: Sender,
    positions: tuple[int, ...] | None,
) -> Float[Tensor, "batch rpos d_model"]:  # fmt: skip
    """What the sender writes to the residual stream in the source run minus the reference run.

    Restricted to the sender's positions (zero elsewhere), then read at `positions` (None: all).
    Head writes are computed per head from `hook_z` and `W_O` (never `[... head d_head d_model]`).
    `ref=None`: `src` already holds the differences (source - reference) of the hooks read.
    """
    idx = _index(positions)

    def diff(name: str, *head: int) -> Tensor:
        at = (slice(None), slice(None), *head)
        return src[name][at] if ref is None else src[name][at] - ref[name][at]

    if isinstance(sender, Head):
        dz = _mask(diff(f"blocks.{sender.layer}.attn.hook_z", sender.head), sender.positions)[:, idx]
        w_o = model.blocks[sender.layer].attn.W_O[sender.head]
        return einsum(dz, w_o, "batch pos d_head, d_head d_model -> batch pos d_model")
    if isinstance(sender, MLP):
        return _mask(diff(f"blocks.{sender.layer}.hook_mlp_out"), sender.positions)[:, idx]
    return _mask(diff("hook_embed") + diff("hook_pos_embed"), sender.positions)[:, idx]


# Results -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PathScores:
    """Effects of senders (rows) through receiver groups (columns), from path patching or attribution.

    `values[i, j]` = effect of sender `senders[i]` through the receivers `receivers[j]` together.
    """

    values: Float[Tensor, "sender receiver"]
    senders: tuple
    receivers: tuple
    n_layers: int
    n_heads: int
    method: str = "exact"
    direction: str = "denoising"
    metric: str = ""

    def _col(self, receiver) -> int:
        if isinstance(receiver, int):
            return receiver
        group = receiver if isinstance(receiver, tuple) else (receiver,)
        return self.receivers.index(group)

    def score(self, sender: Sender, receiver=0) -> float:
        """One sender's effect through a receiver group (a column index, a receiver, or a tuple)."""
        return float(self.values[self.senders.index(sender), self._col(receiver)])

    def heads(self, receiver=0) -> Float[Tensor, "layer head"]:
        """`[layer head]` map of the all-position head senders, for one receiver group."""
        col = self._col(receiver)
        rows = {(s.layer, s.head): i for i, s in enumerate(self.senders) if isinstance(s, Head) and s.positions is None}
        if len(rows) != self.n_layers * self.n_heads:
            raise ValueError(f"a [layer head] map needs every head as a sender; these scores hold {len(rows)}")
        index = torch.tensor([rows[(l, h)] for l in range(self.n_layers) for h in range(self.n_heads)])
        return self.values[index, col].reshape(self.n_layers, self.n_heads)

    def mlps(self, receiver=0) -> Float[Tensor, "layer"]:
        """`[layer]` map of the all-position MLP senders, for one receiver group."""
        col = self._col(receiver)
        rows = {s.layer: i for i, s in enumerate(self.senders) if isinstance(s, MLP) and s.positions is None}
        if len(rows) != self.n_layers:
            raise ValueError(f"a [layer] map needs every MLP as a sender; these scores hold {len(rows)}")
        return self.values[torch.tensor([rows[l] for l in range(self.n_layers)]), col]

    def receiver_maps(self, sender=0) -> dict[str, Tensor]:
        """For one sender: `{"q"|"k"|"v": [layer head], "mlp": [layer], "final": []}` over single receivers.

        Receivers that are not in these scores are NaN.
        """
        row = sender if isinstance(sender, int) else self.senders.index(sender)
        like = self.values
        out = {k: like.new_full((self.n_layers, self.n_heads), math.nan) for k in ("q", "k", "v")}
        out["mlp"] = like.new_full((self.n_layers,), math.nan)
        out["final"] = like.new_tensor(math.nan)
        for j, group in enumerate(self.receivers):
            if len(group) != 1:
                continue
            r, v = group[0], self.values[row, j]
            if isinstance(r, HeadInput) and r.positions is None:
                out[r.kind][r.layer, r.head] = v
            elif isinstance(r, MLPInput) and r.positions is None:
                out["mlp"][r.layer] = v
            elif isinstance(r, FinalResid):
                out["final"] = v.clone()
        return out

    def to_records(self) -> list[dict]:
        """One dict per (sender, receiver group): a tidy table for pandas, CSV or JSON."""
        rows = []
        for i, s in enumerate(self.senders):
            for j, group in enumerate(self.receivers):
                rows.append({
                    "sender": s.name, "sender_type": type(s).__name__, "sender_layer": getattr(s, "layer", None),
                    "sender_head": getattr(s, "head", None),
                    "receiver": "+".join(r.name for r in group),
                    "receiver_type": "+".join(sorted({type(r).__name__ for r in group})),
                    "receiver_layer": group[0].layer if len(group) == 1 and hasattr(group[0], "layer") else None,
                    "receiver_head": group[0].head if len(group) == 1 and hasattr(group[0], "head") else None,
                    "receiver_kind": group[0].kind if len(group) == 1 and hasattr(group[0], "kind") else None,
                    "score": float(self.values[i, j]), "method": self.method, "direction": self.direction,
                    "metric": self.metric,
                })  # fmt: skip
        return rows

    def to_csv(self, path: str | Path) -> None:
        records = self.to_records()
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows(records)

    def to_json(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_records(), indent=1))


# The engine --------------------------------------------------------------------------------------
Row = tuple[tuple, tuple]  # (senders, receiver group)


class PathPatcher:
    """Caches a clean/corrupt pair once, then answers path-patching questions in batched forwards.

    Pass 1 (here): caches of both runs. Pass 2 is skipped when every non-sender is frozen: the
    residual is a sum of component writes, so a receiver's input is then exactly the reference
    input plus the senders' write deltas. Pass 3 resumes the reference run at the earliest
    receiver (`start_at_layer`, from the cached residual), many sender/receiver rows stacked on the
    batch axis, with the receivers' input hooks set to those values. Hooks attached to the model
    around these calls see `rows * batch` examples, row-major.

    Cost: one forward resumed at the receiver's layer per (sender, receiver group) row, `batch_size`
    rows at a time (a q/k/v receiver splits that layer's input per head: memory grows with it).
    Into `FinalResid` only ln_final and the classifier run: a sweep of every sender is nearly free.
    `freeze=False` adds pass 2: one forward per sender set, resumed at its earliest sender.
    """

    def __init__(
        self,
        model,
        clean: Float[Tensor, "batch frames channels height width"],
        corrupt: Float[Tensor, "batch frames channels height width"],
        metric: Metric | Callable,
        *,
        direction: Direction = "denoising",
        freeze: bool = True,
        batch_size: int = 8,
        progress: bool = False,
    ):
        if direction not in ("denoising", "noising"):
            raise ValueError(f"direction must be 'denoising' or 'noising', got {direction!r}")
        if not isinstance(clean, Tensor) or not isinstance(corrupt, Tensor) or clean.shape != corrupt.shape:
            got = f"{_shape(clean)} and {_shape(corrupt)}"
            raise ValueError(f"clean and corrupt must be tensors of one shape, got {got}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        reads, self._per_example = metric_kind(metric)
        if reads is not None:
            model._hook_point(reads)
        self.model, self.cfg, self.metric = model, model.cfg, metric
        self.direction, self.freeze, self.batch_size, self.progress = direction, freeze, batch_size, progress
        L = self.cfg.n_layers
        writes = ["hook_embed", "hook_pos_embed"]
        writes += [f"blocks.{l}.{n}" for l in range(L) for n in ("attn.hook_z", "hook_mlp_out")]
        resids = [f"blocks.{l}.{n}" for l in range(L) for n in ("hook_resid_pre", "hook_resid_mid")]
        ref_names = writes + resids + [f"blocks.{L - 1}.hook_resid_post"] + ([reads] if reads else [])
        ref_x, src_x = (corrupt, clean) if direction == "denoising" else (clean, corrupt)
        with torch.no_grad():
            out, self.ref = model.run_with_cache(ref_x, names_filter=ref_names)
            _, self.src = model.run_with_cache(src_x, names_filter=writes)
        self.batch = ref_x.shape[0]
        self.reads = reads
        self.ref_metric = self._metric_rows(out if reads is None else self.ref[reads], 1)[0]
        self._hook_index = {name: i for i, name in enumerate(model.hook_names)}
        self._metric_index = math.inf if reads is None else self._hook_index[reads]

    # Public questions ----------------------------------------------------------------------------
    def patch(self, senders, receivers, reduce: str = "mean") -> Tensor:
        """The effect of `senders` (a node or a list) through `receivers` (a node or a list, patched together).

        `reduce="mean"`: averaged over the batch (a scalar); `"none"`: one effect per example `[batch]`.
        """
        if reduce not in ("mean", "none"):
            raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")
        S, R = self._nodes(senders, "sender"), self._nodes(receivers, "receiver")
        effect = self._evaluate([(S, R)])[0]
        return effect.mean() if reduce == "mean" else effect

    def senders_into(self, receivers, senders="all") -> PathScores:
        """Each sender alone through one receiver group: `.heads()` `[layer head]`, `.mlps()` `[layer]`."""
        R = self._nodes(receivers, "receiver")
        S = self._sender_list(senders)
        values = self._evaluate([((s,), R) for s in S]).mean(-1)
        return self._scores(values[:, None], S, [R])

    def receivers_of(self, sender: Sender, receivers="all") -> PathScores:
        """One sender through each receiver alone: `.receiver_maps()` gives q/k/v `[layer head]`, mlp `[layer]`."""
        (s,) = self._nodes(sender, "sender")
        R = self._receiver_list(receivers)
        values = self._evaluate([((s,), (r,)) for r in R]).mean(-1)
        return self._scores(values[None, :], [s], [(r,) for r in R])

    def matrix(self, senders="all", receivers="all") -> PathScores:
        """Every sender through every receiver alone: the exact edge scores of the circuit graph."""
        S, R = self._sender_list(senders), self._receiver_list(receivers)
        values = self._evaluate([((s,), (r,)) for s in S for r in R]).mean(-1)
        return self._scores(values.reshape(len(S), len(R)), S, [(r,) for r in R])

    # Node handling -------------------------------------------------------------------------------
    def _nodes(self, nodes, role: str) -> tuple:
        out = tuple(nodes) if isinstance(nodes, (list, tuple)) else (nodes,)
        if not out:
            raise ValueError(f"at least one {role} is needed")
        check_nodes(self.cfg, out, role)
        return out

    def _sender_list(self, senders) -> list[Sender]:
        return all_senders(self.cfg, senders) if isinstance(senders, str) else list(self._nodes(senders, "sender"))

    def _receiver_list(self, receivers) -> list[Receiver]:
        if isinstance(receivers, str):
            return all_receivers(self.cfg, receivers)
        return list(self._nodes(receivers, "receiver"))

    def _scores(self, values: Tensor, senders, receivers) -> PathScores:
        return PathScores(values, tuple(senders), tuple(tuple(g) for g in receivers), self.cfg.n_layers,
                          self.cfg.n_heads, "exact", self.direction, repr(self.metric))  # fmt: skip

    def _live(self, S: tuple, R: tuple) -> bool:
        """Whether any sender reaches any receiver that the metric can see (otherwise the effect is 0)."""
        L = self.cfg.n_layers
        visible = [r for r in R if self._hook_index[receiver_hook(r, L)] <= self._metric_index]
        return any(reaches(s, r) for s in S for r in visible)

    # Evaluation ----------------------------------------------------------------------------------
    def _evaluate(self, rows: list[Row]) -> Float[Tensor, "row batch"]:
        L = self.cfg.n_layers
        effects = torch.zeros(len(rows), self.batch, dtype=self.ref_metric.dtype, device=self.ref_metric.device)
        live = [i for i, (S, R) in enumerate(rows) if self._live(S, R)]
        by_start: dict[int, list[int]] = defaultdict(list)
        for i in live:
            by_start[min(_receiver_layer(r, L) for r in rows[i][1])].append(i)
        chunks = [(start, idx[j : j + self.batch_size]) for start, idx in sorted(by_start.items())
                  for j in range(0, len(idx), self.batch_size)]  # fmt: skip
        captured = self._pass2([rows[i] for i in live]) if not self.freeze else None
        with torch.no_grad():
            for start, idx in tqdm(chunks, desc="path patching", disable=not self.progress):
                values = [{r: self._value(rows[i][0], r, captured) for r in rows[i][1]} for i in idx]
                effects[idx] = self._run_chunk(start, values) - self.ref_metric
        return effects

    def _value(self, S: tuple, r: Receiver, captured) -> Tensor:
        """The receiver's input at its positions: reference + sender deltas (frozen), or the pass-2 value."""
        positions = node_positions(r, self.cfg)
        idx = _index(positions)
        hook = source_hook(r, self.cfg.n_layers)
        if not any(reaches(s, r) for s in S):
            return self.ref[hook][:, idx]
        if captured is not None:
            return captured[(S, hook)][:, idx]
        value = self.ref[hook][:, idx].clone()
        for s in S:
            if reaches(s, r):
                value += write_delta(self.model, self.src, self.ref, s, positions)
        return value

    def _run_chunk(self, start: int, values: list[dict]) -> Float[Tensor, "row batch"]:
        """Resume the reference run at `start` with one row per dict of receiver values; metric per row."""
        L, B, k = self.cfg.n_layers, self.batch, len(values)
        resid = (self.ref[f"blocks.{start}.hook_resid_pre"] if start < L else self.ref[source_hook(FinalResid(), L)])
        resid = resid.repeat(k, 1, 1)
        entries: dict[str, list] = defaultdict(list)
        for i, vals in enumerate(values):
            for r, v in vals.items():
                entries[receiver_hook(r, L)].append((i, getattr(r, "head", None), _index(node_positions(r, self.cfg)), v))
        if start == L:  # only the final residual is a receiver: set it here, nothing else is recomputed
            _set_rows(resid, entries.pop(source_hook(FinalResid(), L)), B)
        hooks = [(name, _setter(es, B)) for name, es in entries.items()]
        return self._metric_rows(self._run(resid, start, hooks), k)

    def _run(self, resid: Tensor, start: int, hooks: list) -> Tensor:
        """Run from `blocks.{start}.hook_resid_pre` (start = n_layers: only ln_final and the classifier)."""
        L, reads = self.cfg.n_layers, self.reads
        if start == L and reads == source_hook(FinalResid(), L):
            return resid
        captured = {}
        if reads is not None:
            hooks = [*hooks, (reads, lambda t, hook: captured.__setitem__("act", t))]
        stop = int(reads.split(".")[1]) + 1 if reads and reads.startswith("blocks.") else None
        out = self.model.run_with_hooks(resid, start_at_layer=start, stop_at_layer=stop, fwd_hooks=hooks)
        return out if reads is None else captured["act"]

    def _metric_rows(self, act: Tensor, k: int) -> Float[Tensor, "row batch"]:
        """The metric of each of `k` rows of `batch` clips; a plain (whole-batch) metric's value goes to every clip."""
        rows = act.reshape(k, act.shape[0] // k, *act.shape[1:])
        if self._per_example:
            return torch.stack([self.metric(row) for row in rows])
        return torch.stack([torch.as_tensor(self.metric(row)).reshape(()).expand(row.shape[0]) for row in rows])

    def _pass2(self, rows: list[Row]) -> dict:
        """Nothing frozen: run the reference with only the senders patched; keep each receiver's source residual."""
        L, B = self.cfg.n_layers, self.batch
        need: dict[tuple, set[str]] = defaultdict(set)
        for S, R in rows:
            need[S] |= {source_hook(r, L) for r in R if any(reaches(s, r) for s in S)}
        sets = sorted(need, key=lambda S: min(getattr(s, "layer", 0) for s in S))
        captured: dict = {}
        with torch.no_grad():
            for j in tqdm(range(0, len(sets), self.batch_size), desc="pass 2", disable=not self.progress):
                chunk = sets[j : j + self.batch_size]
                start = min(getattr(s, "layer", 0) for S in chunk for s in S)
                resid = self.ref[f"blocks.{start}.hook_resid_pre"].repeat(len(chunk), 1, 1)
                patches: dict[str, list] = defaultdict(list)
                for i, S in enumerate(chunk):
                    for s in S:
                        if isinstance(s, Embed):
                            resid[i * B : (i + 1) * B] += write_delta(self.model, self.src, self.ref, s, None)
                        elif isinstance(s, Head):
                            name, idx = f"blocks.{s.layer}.attn.hook_z", _index(s.positions)
                            patches[name].append((i, s.head, idx, self.src[name][:, idx, s.head]))
                        else:
                            name, idx = f"blocks.{s.layer}.hook_mlp_out", _index(s.positions)
                            patches[name].append((i, None, idx, self.src[name][:, idx]))
                hooks = [(name, _setter(es, B)) for name, es in patches.items()]
                store: dict[str, Tensor] = {}
                names = set().union(*(need[S] for S in chunk))
                hooks += [(name, lambda t, hook: store.__setitem__(hook.name, t.clone())) for name in names]
                stop = min(L, max(int(name.split(".")[1]) for name in names) + 1)
                self.model.run_with_hooks(resid, start_at_layer=start, stop_at_layer=stop, fwd_hooks=hooks)
                for i, S in enumerate(chunk):
                    for name in need[S]:
                        captured[(S, name)] = store[name][i * B : (i + 1) * B]
        return captured


def _set_rows(t: Tensor, entries: list, B: int) -> Tensor:
    for i, head, idx, value in entries:
        rows = t[i * B : (i + 1) * B]
        if head is None:
            rows[:, idx] = value
        else:
            rows[:, idx, head] = value
    return t


def _setter(entries: list, B: int):
    def set_receivers(t: Tensor, hook) -> Tensor:
        return _set_rows(t, entries, B)

    return set_receivers


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__


# Functional API ----------------------------------------------------------------------------------
def path_patch(model, clean, corrupt, senders, receivers, metric: Metric | Callable, *, direction: Direction = "denoising",
               freeze: bool = True, reduce: str = "mean") -> Tensor:  # fmt: skip
    """Effect of `senders` on `metric` through `receivers` only (see the module docstring)."""
    return PathPatcher(model, clean, corrupt, metric, direction=direction, freeze=freeze).patch(
        senders, receivers, reduce
    )


def path_patch_senders(model, clean, corrupt, receivers, metric: Metric | Callable, *, senders="all",
                       direction: Direction = "denoising", freeze: bool = True, batch_size: int = 8,
                       progress: bool = False) -> PathScores:  # fmt: skip
    """Sweep: every sender alone into one receiver group; `.heads()` -> `[layer head]`, `.mlps()` -> `[layer]`."""
    pp = PathPatcher(model, clean, corrupt, metric, direction=direction, freeze=freeze, batch_size=batch_size,
                     progress=progress)  # fmt: skip
    return pp.senders_into(receivers, senders)


def path_patch_receivers(model, clean, corrupt, sender: Sender, metric: Metric | Callable, *, receivers="all",
                         direction: Direction = "denoising", freeze: bool = True, batch_size: int = 8,
                         progress: bool = False) -> PathScores:  # fmt: skip
    """Sweep: one sender into every receiver alone; `.receiver_maps()` -> q/k/v `[layer head]`, mlp `[layer]`."""
    pp = PathPatcher(model, clean, corrupt, metric, direction=direction, freeze=freeze, batch_size=batch_size,
                     progress=progress)  # fmt: skip
    return pp.receivers_of(sender, receivers)


__all__ = [
    "READOUT", "ReadoutPositions", "Embed", "FinalResid", "Head", "HeadInput", "MLP", "MLPInput", "PathPatcher", "PathScores", "all_receivers",
    "all_senders", "path_patch", "path_patch_receivers", "path_patch_senders", "reaches",
]  # fmt: skip
