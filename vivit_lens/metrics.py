"""Metrics for patching and attribution: small objects that say which activation they read and score it.

A metric reads either the logits (`reads is None`) or one hook's activation (`reads` = hook
name) and returns one number per batch element, so patching engines can batch many runs.

    m = LogitDiff(model.label_id("bowling"), model.label_id("golf_putt"))
    m = SignalRecovery.from_caches(clean_cache, corrupt_cache, hook="blocks.11.hook_resid_post", positions=[0])
    m(activation)   # Float[Tensor, "batch"]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from jaxtyping import Float
from torch import Tensor

from vivit_lens.utils import index_tuple


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
    (`delta = r_clean - r_corrupt`):

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
        if float((self.clean - self.corrupt).norm()) == 0.0:
            raise ValueError(f"clean and corrupt runs are identical at {self.hook}: there is no signal to recover")

    @classmethod
    def from_caches(
        cls,
        clean_cache,
        corrupt_cache,
        hook: str,
        positions: int | Sequence[int] = (0,),
        kind: Literal["projection", "norm"] = "projection",
    ) -> SignalRecovery:
        """Build from two caches holding `hook` (batch 1 each, or equal batches)."""
        pos = index_tuple(positions)
        sel = list(pos)
        return cls(hook, pos, clean_cache[hook][:, sel], corrupt_cache[hook][:, sel], kind)

    def __call__(self, act: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch"]:
        r = act[:, list(self.positions)].flatten(1)
        clean, corrupt = self.clean.flatten(1).to(r), self.corrupt.flatten(1).to(r)
        delta = clean - corrupt
        if self.kind == "projection":
            return 100 * ((r - corrupt) * delta).sum(-1) / (delta * delta).sum(-1)
        return 100 * (r - corrupt).norm(dim=-1) / delta.norm(dim=-1)


def final_resid_hook(model) -> str:
    """The paper's default signal location: the last block's output (before the final LayerNorm)."""
    return f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"


__all__ = ["Metric", "Logit", "LogitDiff", "SignalRecovery", "final_resid_hook"]
