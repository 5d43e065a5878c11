"""Ablation: knock out activations (zero, mean, resample, Gaussian noise) or pixels, and compare top-k logits.

    region = model.grid.positions(frames=range(20, 32), box=(60, 80, 140, 160))    # the ball-pin tokens
    abl = [Ablation.zero(f"blocks.{l}.hook_resid_pre", positions=region) for l in (0,)]
    before, after = model(x), ablate(model, x, abl)
    table = topk_table(before, after, model.labels, k=6)       # the paper's Table 1, as a Markdown table

An `Ablation` is a hook function (`fn(activation, hook)`) for one hook point, restricted to token
positions and/or heads; use it with `model.hooks(abl.fwd_hooks())`, `model.run_with_hooks`, or
`ablate`. Positions index the `pos` axis (`query_pos` for attention patterns), heads the `head` axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Union

import torch
from jaxtyping import Float
from torch import Tensor

from vivit_lens.interp.patching import site_mask
from vivit_lens.models.utils import index_tuple

KINDS = ("zero", "mean", "resample", "noise")
Reference = Union[Tensor, Mapping[str, Tensor]]


@dataclass(frozen=True)
class Ablation:
    """Replace (or perturb) `hook`'s activation at `positions` x `heads` (None: all).

    - `zero`: set to 0.
    - `mean`: set to `value`, the mean activation over a reference batch (`Ablation.mean`), per
      position, or, with `over="tokens"`, one mean vector over the reference's tokens; without a
      reference, each clip's own mean over its tubelet tokens ([CLS] excluded) is used. `first` is the
      position of the first tubelet token (1 after ViViT's [CLS]); `ablate` sets it from `model.grid`.
    - `resample`: set to another run's activation `value` `[n ...]`: row i of a batch of n, one row
      broadcast, or (other n) rows drawn with `seed`.
    - `noise`: add Gaussian noise of standard deviation `std` (drawn with `seed`: reproducible).
    """

    hook: str
    kind: str = "zero"
    positions: int | Sequence[int] | Tensor | None = None  # stored as a tuple
    heads: int | Sequence[int] | Tensor | None = None  # stored as a tuple
    value: Tensor | None = None
    std: float | int = 0.0
    seed: int = 0
    first: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "positions", index_tuple(self.positions))
        object.__setattr__(self, "heads", index_tuple(self.heads))
        if self.kind not in KINDS:
            raise ValueError(f"kind must be zero, mean, resample or noise; got {self.kind!r}")
        if self.kind == "resample" and self.value is None:
            raise ValueError("a resample ablation needs the other run's activation (Ablation.resample)")
        if self.kind == "noise" and not self.std > 0:
            raise ValueError(f"a noise ablation needs std > 0, got {self.std}")

    # Constructors ------------------------------------------------------------------------------
    @classmethod
    def zero(cls, hook: str, positions: Any = None, heads: Any = None) -> Ablation:
        return cls(hook, "zero", positions, heads)

    @classmethod
    def mean(cls, hook: str, reference: Reference | None = None, positions: Any = None, heads: Any = None,
             over: str = "batch") -> Ablation:  # fmt: skip
        """Mean ablation; `reference`: activations `[n ...]` of `hook` on reference clips, or a cache holding them.

        `over="batch"`: the mean over the n clips, position by position. `over="tokens"`: also over
        the reference's tubelet tokens (from the first one: a cache that knows its config says where, 1 after
        ViViT's [CLS], 0 without one; otherwise 1), one vector for every ablated position.
        """
        if over not in ("batch", "tokens"):
            raise ValueError(f"over must be 'batch' or 'tokens', got {over!r}")
        if reference is None:
            return cls(hook, "mean", positions, heads)
        if over == "tokens" and hook.endswith(("hook_pattern", "hook_attn_scores")):
            raise ValueError("over='tokens' needs a [batch pos ...] activation, not an attention pattern")
        ref = reference[hook] if isinstance(reference, Mapping) else reference
        value = ref.mean(0)
        if over == "tokens":
            cfg = getattr(reference, "cfg", None)
            first = cfg.n_pos - cfg.n_tubelets if cfg is not None else 1
            value = value[first:].mean(0, keepdim=True).expand_as(value)
        return cls(hook, "mean", positions, heads, value=value.detach())

    @classmethod
    def resample(cls, hook: str, source: Reference, positions: Any = None, heads: Any = None,
                 seed: int = 0) -> Ablation:  # fmt: skip
        """Resample ablation from another run: `source` is its activation `[n ...]` or a cache holding `hook`."""
        value = source[hook] if isinstance(source, Mapping) else source
        return cls(hook, "resample", positions, heads, value=value.detach(), seed=seed)

    @classmethod
    def noise(cls, hook: str, std: float | int, positions: Any = None, heads: Any = None, seed: int = 0) -> Ablation:
        return cls(hook, "noise", positions, heads, std=std, seed=seed)

    # Applying ----------------------------------------------------------------------------------
    def replacement(self, act: Tensor, axes: str = "batch pos") -> Tensor:
        """What the selected entries become, for an activation `act [batch ...]` (broadcastable)."""
        if self.kind == "zero":
            return torch.zeros((), dtype=act.dtype, device=act.device)
        if self.kind == "noise":
            g = torch.Generator().manual_seed(self.seed)
            return act + self.std * torch.randn(act.shape, generator=g).to(act)
        if self.kind == "mean" and self.value is None:
            if axes.split()[1] != "pos":
                raise ValueError(f"a clip's own token mean needs a [batch pos ...] activation, {self.hook} is [{axes}]")
            return act[:, self.first:].mean(1, keepdim=True)  # each clip's own token mean
        value = self.value.to(act)
        if self.kind == "mean":
            return value[None]
        if value.shape[1:] != act.shape[1:]:
            raise ValueError(f"resample source for {self.hook} is {tuple(value.shape)}, the activation {tuple(act.shape)}")
        if value.shape[0] in (1, act.shape[0]):
            return value
        rows = torch.randint(value.shape[0], (act.shape[0],), generator=torch.Generator().manual_seed(self.seed))
        return value[rows.to(value.device)]

    def __call__(self, act: Tensor, hook) -> Tensor:
        mask = site_mask(act.shape, hook.axes, self.positions, self.heads).to(act.device)
        return torch.where(mask, self.replacement(act, hook.axes), act)

    def fwd_hooks(self) -> list[tuple[str, Ablation]]:
        return [(self.hook, self)]


def ablate(model, x: Tensor, ablations: Ablation | Sequence[Ablation], **kwargs) -> Tensor:
    """The model's output with every ablation applied (`kwargs` go to the forward, e.g. `stop_at_layer`)."""
    ablations = [ablations] if isinstance(ablations, Ablation) else list(ablations)
    ablations = [replace(a, first=model.grid.first) for a in ablations]
    with torch.no_grad():
        return model.run_with_hooks(x, fwd_hooks=[h for a in ablations for h in a.fwd_hooks()], **kwargs)


def mask_pixels(
    pixel_values: Float[Tensor, "batch frames channels height width"],
    frames: Sequence[int] | range | None = None,
    box: tuple[int, int, int, int] | None = None,
    value: float | int | str | Tensor = 0.0,
) -> Float[Tensor, "batch frames channels height width"]:
    """A copy of the clip with a pixel box set to `value` in the given frames (pixel-space ablation).

    `box = (x0, y0, x1, y1)` in input pixels, ends exclusive, as in `model.grid.positions(box=...)`
    (None: whole frame);
    `frames`: input frame indices (None: all). `value`: a number in the model's normalised space
    (with the default preprocessing, -3.0 is black, 1.0 white and 0.0 the grey level 191), a
    per-channel tensor `[channels]`, or `"mean"`: each clip's per-channel mean over all its frames
    and pixels.
    """
    out = pixel_values.clone()
    fr = slice(None) if frames is None else torch.as_tensor(list(frames), dtype=torch.long)
    left, top, right, bottom = box if box is not None else (0, 0, out.shape[-1], out.shape[-2])
    if not (0 <= top < bottom <= out.shape[-2] and 0 <= left < right <= out.shape[-1]):
        raise ValueError(f"box (x0, y0, x1, y1) = {box} is empty or outside the {out.shape[-1]}x{out.shape[-2]} "
                         "(width x height) frame")
    if isinstance(value, str):
        if value != "mean":
            raise ValueError(f"value must be a number, a [channels] tensor or 'mean', got {value!r}")
        fill = pixel_values.mean(dim=(1, 3, 4))[:, None, :, None, None]  # [batch 1 channels 1 1]
    elif isinstance(value, Tensor):
        fill = value.to(out).reshape(1, 1, -1, 1, 1)
    else:
        fill = torch.tensor(float(value), dtype=out.dtype)
    region = out[:, fr, :, top:bottom, left:right]
    out[:, fr, :, top:bottom, left:right] = fill.expand_as(region) if fill.ndim else fill
    return out


# Top-k table ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TopKTable:
    """Top-k classes before an intervention, with their logits after it (the paper's Table 1).

    Each row: `rank`, `label`, `class_id`, `original` (logit), `ablated` (same class's logit after),
    `change` (ablated - original), `ablated_rank` (that class's rank after), and
    `ablated_top_label` / `ablated_top_logit` (what is at this rank after the intervention).
    """

    rows: tuple[dict[str, Any], ...]

    def to_records(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]

    def __str__(self) -> str:
        lines = ["| Rank | Original (logit) | Ablated (logit) | Change | Rank after |", "|---|---|---|---|---|"]
        for r in self.rows:
            lines.append(f"| {r['rank']} | {r['label']} ({r['original']:.4f}) | {r['ablated_top_label']} "
                         f"({r['ablated_top_logit']:.4f}) | {r['change']:+.4f} | {r['ablated_rank']} |")  # fmt: skip
        return "\n".join(lines)


def topk_table(
    before_logits: Float[Tensor, "*before n_classes"],
    after_logits: Float[Tensor, "*after n_classes"],
    labels: Mapping[int, str] | Sequence[str] | None = None,
    k: int = 5,
) -> TopKTable:
    """Rank the `k` top classes of `before_logits` (one clip) and report their logits after the intervention.

    `labels`: `model.labels` (id -> name), a list of names, or None (`"LABEL i"`, as in the paper).
    """
    before, after = before_logits.detach().reshape(-1).double(), after_logits.detach().reshape(-1).double()
    if before.shape != after.shape:
        raise ValueError(f"before and after logits differ in shape: {tuple(before.shape)} vs {tuple(after.shape)}")
    if not 1 <= k <= before.shape[0]:
        raise ValueError(f"k must be in [1, {before.shape[0]}], got {k}")

    def name(i: int) -> str:
        return str(labels[i]) if labels is not None else f"LABEL {i}"

    order_before = torch.argsort(before, descending=True, stable=True)
    order_after = torch.argsort(after, descending=True, stable=True)
    rank_after = torch.empty_like(order_after)
    rank_after[order_after] = torch.arange(len(order_after))
    rows = []
    for r in range(k):
        c, top_after = int(order_before[r]), int(order_after[r])
        rows.append({
            "rank": r + 1, "label": name(c), "class_id": c, "original": float(before[c]), "ablated": float(after[c]),
            "change": float(after[c] - before[c]), "ablated_rank": int(rank_after[c]) + 1,
            "ablated_top_label": name(top_after), "ablated_top_logit": float(after[top_after]),
        })  # fmt: skip
    return TopKTable(tuple(rows))


__all__ = ["Ablation", "TopKTable", "ablate", "mask_pixels", "topk_table"]
