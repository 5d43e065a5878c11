"""Hook points and the machinery to run a model with hooks or a cache (TransformerLens vocabulary).

A `HookPoint` is an identity module placed on an activation; its name is its module path.
`HookedRootModule` gives the root model `run_with_hooks`, `run_with_cache`, `hooks()` and
`reset_hooks()`.

    def zero_head(z, hook): z[:, :, 3] = 0; return z
    logits = model.run_with_hooks(x, fwd_hooks=[("blocks.3.attn.hook_z", zero_head)])
    logits, cache = model.run_with_cache(x, names_filter=lambda name: name.endswith("hook_z"))
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import nn

HookFn = Callable[..., Any]  # fn(activation, hook=HookPoint) -> new activation or None
NamesFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
Direction = Literal["fwd", "bwd"]


class HookNameError(KeyError):
    """A hook name that the model does not have."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0])


@dataclass
class _Hook:
    fn: HookFn
    hook_point: HookPoint
    direction: Direction

    def remove(self) -> None:
        hooks = self.hook_point._fwd_hooks if self.direction == "fwd" else self.hook_point._bwd_hooks
        if self in hooks:
            hooks.remove(self)


class HookPoint(nn.Module):
    """Identity on an activation, where forward and backward hooks can be attached.

    A forward hook is called as `fn(activation, hook=self)`; if it returns a tensor, that tensor
    replaces the activation downstream. A backward hook gets the gradient of the activation in
    the same way (its return value, if any, replaces the gradient).
    """

    def __init__(self, axes: str = "") -> None:
        super().__init__()
        self.name: str = ""
        self.axes = axes  # the activation's named axes, e.g. "batch pos head d_head"
        self._fwd_hooks: list[_Hook] = []
        self._bwd_hooks: list[_Hook] = []

    @property
    def has_hooks(self) -> bool:
        """Whether anything is attached: components use this to compute optional activations."""
        return bool(self._fwd_hooks or self._bwd_hooks)

    def add_hook(self, fn: HookFn, dir: Direction = "fwd") -> _Hook:
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        handle = _Hook(fn, self, dir)
        (self._fwd_hooks if dir == "fwd" else self._bwd_hooks).append(handle)
        return handle

    def remove_hooks(self, dir: Direction | Literal["both"] = "both") -> None:
        if dir in ("fwd", "both"):
            self._fwd_hooks.clear()
        if dir in ("bwd", "both"):
            self._bwd_hooks.clear()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for h in list(self._fwd_hooks):
            out = h.fn(x, hook=self)
            if out is not None:
                if not isinstance(out, torch.Tensor) or out.shape != x.shape:
                    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
                    raise ValueError(
                        f"hook {getattr(h.fn, '__name__', h.fn)!r} on {self.name} returned {got}; "
                        f"expected a tensor of shape {tuple(x.shape)} (or None)"
                    )
                x = out
        if self._bwd_hooks and x.requires_grad:
            for h in list(self._bwd_hooks):
                x.register_hook(lambda grad, h=h: h.fn(grad, hook=self))
        return x

    def extra_repr(self) -> str:
        return f"{self.name}: [{self.axes}]"


class HookedRootModule(nn.Module):
    """Mixin for the root model: names every HookPoint by its module path and runs hooks."""

    hook_dict: dict[str, HookPoint]

    def setup_hooks(self) -> None:
        """Call at the end of `__init__`: give each HookPoint its name and index them."""
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def _apply(self, fn, recurse: bool = True):
        """`.to()`, `.cuda()`, `.double()` ... all land here: keep `cfg.device` / `cfg.dtype` true afterwards."""
        out = super()._apply(fn, recurse)
        cfg, param = getattr(self, "cfg", None), next(self.parameters(), None)
        if param is not None and hasattr(cfg, "_record_placement") and (cfg.device, cfg.dtype) != (
            param.device, param.dtype
        ):
            self.cfg = copy.copy(cfg)  # a config shared with another model keeps that model's placement
            self.cfg._record_placement(param.device, param.dtype)
        return out

    @property
    def hook_names(self) -> list[str]:
        """Every hook name, in the order the forward pass reaches them."""
        return list(self.hook_dict)

    # Name resolution ---------------------------------------------------------------------------
    def _hook_point(self, name: str) -> HookPoint:
        try:
            return self.hook_dict[name]
        except KeyError:
            close = difflib.get_close_matches(name, self.hook_dict, n=5, cutoff=0.5)
            hint = f"; closest valid names: {close}" if close else ""
            raise HookNameError(f"no hook point named {name!r}{hint}") from None

    def _names_matching(self, names_filter: NamesFilter) -> list[str]:
        if names_filter is None:
            return self.hook_names
        if isinstance(names_filter, str):
            return [self._hook_point(names_filter).name]
        if callable(names_filter):
            return [n for n in self.hook_dict if names_filter(n)]
        return [self._hook_point(n).name for n in names_filter]

    # Adding and removing -------------------------------------------------------------------------
    def add_hook(self, name: str | Callable[[str], bool], fn: HookFn, dir: Direction = "fwd") -> list[_Hook]:
        """Attach `fn` to the hook named `name`, or to every hook whose name passes `name(n)`."""
        names = [n for n in self.hook_dict if name(n)] if callable(name) else [name]
        return [self._hook_point(n).add_hook(fn, dir) for n in names]

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point."""
        for hp in self.hook_dict.values():
            hp.remove_hooks("both")

    @contextmanager
    def hooks(
        self,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
    ) -> Iterator[HookedRootModule]:
        """Attach hooks for the duration of a `with` block; they are removed on exit, even on error."""
        handles: list[_Hook] = []
        try:
            for name, fn in fwd_hooks:
                handles += self.add_hook(name, fn, "fwd")
            for name, fn in bwd_hooks:
                handles += self.add_hook(name, fn, "bwd")
            yield self
        finally:
            for h in handles:
                h.remove()

    def run_with_hooks(
        self,
        *args: Any,
        fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        bwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]] = (),
        **kwargs: Any,
    ) -> Any:
        """Run the forward pass with temporary hooks (removed afterwards)."""
        if bwd_hooks:
            raise ValueError(
                "backward hooks fire during .backward(), after run_with_hooks returns; "
                "use `with model.hooks(bwd_hooks=...): model(x).backward()` instead"
            )
        with self.hooks(fwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self,
        *args: Any,
        names_filter: NamesFilter = None,
        device: str | torch.device | None = None,
        incl_bwd: bool = False,
        remove_batch_dim: bool = False,
        **kwargs: Any,
    ) -> tuple[Any, Any]:
        """Run the model and return `(output, ActivationCache)` of the activations `names_filter` picks.

        `names_filter`: None (everything), a name, a list of names, or a predicate on names.
        `device`: where to store cached tensors (default: where they are computed).
        `incl_bwd`: also backpropagate the summed output and cache gradients as `name + "_grad"`.
        `remove_batch_dim`: drop the batch axis of a batch-1 run (TransformerLens). The cache knows
        the model (`cache.model`), so its analysis methods need no `model=`.
        """
        from vivit_lens.interp.cache import ActivationCache

        store: dict[str, torch.Tensor] = {}

        def save(t: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name] = t.detach().to(device) if device is not None else t.detach()

        def save_grad(g: torch.Tensor, hook: HookPoint) -> None:
            store[hook.name + "_grad"] = g.detach().to(device) if device is not None else g.detach()

        names = self._names_matching(names_filter)
        fwd = [(n, save) for n in names]
        bwd = [(n, save_grad) for n in names] if incl_bwd else []
        with self.hooks(fwd, bwd):
            if incl_bwd:
                with torch.enable_grad():
                    out = self(*args, **kwargs)
                    out.sum().backward()
            else:
                out = self(*args, **kwargs)
        ordered = {n: store[n] for n in self.hook_dict if n in store}
        ordered.update({n: store[n] for n in store if n.endswith("_grad")})
        cache = ActivationCache(ordered, self)
        return out, cache.remove_batch_dim() if remove_batch_dim else cache
