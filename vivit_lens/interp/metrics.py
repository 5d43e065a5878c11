"""Metrics for patching and attribution: small objects that say which activation they read and score it.

A metric reads either the logits (`reads is None`) or one hook's activation (`reads` = hook
name) and returns one number per batch element, so patching engines can batch many runs.

    m = LogitDiff(model.label_id("bowling"), model.label_id("golf_putt"))
    m = SignalRecovery.from_caches(clean_cache, corrupt_cache, hook="blocks.11.hook_resid_post", positions=[0])
    m(activation)   # Float[Tensor, "batch"]
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from vivit_lens.models.utils import index_tuple


class PrecisionWarning(UserWarning):
    """A result that the floating-point precision of the run cannot resolve."""


# The recovery's expected float32 error, in points, grows as eps * ||r|| / ||delta||: above this many
# points, say so. (Measured: 3.6 points of error at ||delta|| = 1.6e-5 on a small float32 model.)
_PRECISION_POINTS = 1.0


@dataclass(frozen=True)
class Metric:
    """Base: `reads` names the activation scored (None: the logits)."""

    reads: str | None = field(default=None, init=False)

    def __call__(self, act: Tensor) -> Float[Tensor, "batch"]:
        raise TypeError(f"{type(self).__name__} is an abstract metric")


@dataclass(frozen=True)
class Logit(Metric):
    """The logit of one class: `logits[:, label]`."""

    label: int

    def __call__(self, logits: Float[Tensor, "batch n_classes"]) -> Float[Tensor, "batch"]:
        return logits[:, self.label]


@dataclass(frozen=True)
class LogitDiff(Metric):
    """`logits[:, a] - logits[:, b]`: how much the model prefers class `a` over class `b`."""

    a: int
    b: int

    def __call__(self, logits: Float[Tensor, "batch n_classes"]) -> Float[Tensor, "batch"]:
        return logits[:, self.a] - logits[:, self.b]


@dataclass(frozen=True)
class SignalRecovery(Metric):
    """How much of the clean - corrupt difference of a residual a patched run recovers, in percent.

    With `r` the activation at `hook`, restricted to `positions` and flattened
    (`delta = r_clean - r_corrupt`, one per example of a batch; an example with `delta = 0` is a
    ValueError, and a `delta` too small for the dtype to resolve a PrecisionWarning):

    - `kind="projection"` (default, the paper's measure):
      `100 * <r_patched - r_corrupt, delta> / ||delta||^2`. 0 for the corrupt run, 100 for the
      clean run; above 100 when the patch overshoots along `delta`, negative when it pushes the
      other way.
    - `kind="norm"`: `100 * ||r_patched - r_corrupt|| / ||delta||`. Direction-blind: it says how
      big the change is, not whether it points toward the clean run.
    """

    hook: str
    positions: tuple[int, ...]
    clean: Tensor
    corrupt: Tensor
    kind: Literal["projection", "norm"] = "projection"

    def __post_init__(self) -> None:
        object.__setattr__(self, "reads", self.hook)
        if self.kind not in ("projection", "norm"):
            raise ValueError(f"kind must be 'projection' or 'norm', got {self.kind!r}")
        if self.clean.shape != self.corrupt.shape:
            raise ValueError(f"clean {tuple(self.clean.shape)} and corrupt {tuple(self.corrupt.shape)} differ in shape")
        delta = (self.clean - self.corrupt).flatten(1)
        if delta.device.type == "meta":  # no values to check
            return
        norms = delta.norm(dim=-1)
        zero = (norms == 0).nonzero().flatten().tolist()
        if zero:
            raise ValueError(f"clean and corrupt runs are identical at {self.hook} for example(s) {zero} of "
                             f"{delta.shape[0]}: there is no signal to recover there (drop those pairs)")  # fmt: skip
        eps = torch.finfo(self.clean.dtype).eps
        points = 100 * eps * self.corrupt.flatten(1).norm(dim=-1) / norms  # rounding of r, relative to delta
        if float(points.max()) > _PRECISION_POINTS:
            warnings.warn(
                f"clean and corrupt differ at {self.hook} by ||delta|| = {float(norms.min()):.2g}, so little that "
                f"{self.clean.dtype} rounding alone can move the recovery by ~{float(points.max()):.2g} points; "
                "run the model and the pair in float64 (model.double()) for this measurement",
                PrecisionWarning, stacklevel=3,
            )  # fmt: skip

    @classmethod
    def from_caches(
        cls,
        clean_cache,
        corrupt_cache,
        hook: str,
        positions: int | Sequence[int] | str = "readout",
        kind: Literal["projection", "norm"] = "projection",
    ) -> SignalRecovery:
        """Build from two caches holding `hook` (batch 1 each, or equal batches).

        `positions`: token positions, or `"readout"` (default): the positions the model's readout reads
        (`cfg.readout_positions`: [CLS] on ViViT, every token for a mean-pooled VideoMAE), from the caches' config.
        """
        if isinstance(positions, str):
            cfg = getattr(clean_cache, "cfg", None)
            if positions != "readout":
                raise ValueError(f"positions must be token indices or 'readout', got {positions!r}")
            if cfg is None:
                raise ValueError(f"positions='readout' needs caches that know their model's config (from "
                                 f"model.run_with_cache), got a {type(clean_cache).__name__}; pass token indices")  # fmt: skip
            positions = cfg.readout_positions
        pos = index_tuple(positions)
        sel = list(pos)
        return cls(hook, pos, clean_cache[hook][:, sel], corrupt_cache[hook][:, sel], kind)

    def __call__(self, act: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch"]:
        # In float32 at least: in float16 the squared norm of a residual difference overflows past 65504 (measured: the
        # shipped model's [CLS] difference at the last layer gave inf / inf = NaN).
        r = act[:, list(self.positions)].flatten(1).to(torch.promote_types(act.dtype, torch.float32))
        clean, corrupt = self.clean.flatten(1).to(r), self.corrupt.flatten(1).to(r)
        delta = clean - corrupt
        if self.kind == "projection":
            return 100 * ((r - corrupt) * delta).sum(-1) / (delta * delta).sum(-1)
        return 100 * (r - corrupt).norm(dim=-1) / delta.norm(dim=-1)


def metric_kind(metric) -> tuple[str | None, bool]:
    """(the hook it reads, None for the logits; whether it scores each clip) for a Metric or a plain callable.

    A plain callable is TransformerLens' kind of metric: the `[batch n_classes]` logits in, one
    number for the whole batch out.
    """
    if isinstance(metric, Metric) or hasattr(metric, "reads"):
        return metric.reads, True
    if not callable(metric):
        raise TypeError(f"metric must be a vivit_lens Metric or a callable on the logits returning a scalar "
                        f"(TransformerLens), got {type(metric).__name__}")  # fmt: skip
    return None, False


def final_resid_hook(model) -> str:
    """The paper's default signal location: the last block's output (before the final LayerNorm)."""
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


__all__ = ["Metric", "Logit", "LogitDiff", "PrecisionWarning", "SignalRecovery", "final_resid_hook", "metric_kind"]
