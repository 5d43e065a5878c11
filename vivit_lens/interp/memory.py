"""A memory guard: estimate the bytes a run will hold and refuse it, before any compute, when they do not fit.

Every estimate is read from the hook points' named axes (`batch head query_pos key_pos` ...) and the
config, so it is exact for a cache: every `hook_pattern` of ViViT-B at batch 8 is 8 x 12 layers x 12
heads x 3137^2 x 4 bytes = 42.2 GiB, which no laptop holds.

    memory.cache_bytes(model, ["blocks.0.attn.hook_pattern"], batch=8)   # 3.5e9
    model.run_with_cache(x)                                 # raises MemoryGuardError if it cannot fit
    model.run_with_cache(x, check_memory=False)             # the override (or VIVIT_LENS_NO_MEMORY_GUARD=1)
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor

ENV_OVERRIDE = "VIVIT_LENS_NO_MEMORY_GUARD"
# Share of the available memory a run may plan to hold: the rest is for the allocator, Python and the OS.
HEADROOM = 0.9
_PATTERN_AXES = "batch head query_pos key_pos"


class MemoryGuardError(MemoryError):
    """A run that would hold more memory than is available; says how much, and what to do."""


def _gib(n: int | float) -> str:  # noqa: PYI041 - beartype, under pytest, takes no int for float
    return f"{n / 2**30:.1f} GiB"


def guard_disabled() -> bool:
    return os.environ.get(ENV_OVERRIDE, "").strip().lower() in ("1", "true", "yes", "on")


# Estimates -------------------------------------------------------------------------------------
def _axis_sizes(cfg, batch: int) -> dict[str, int]:
    return {"batch": batch, "pos": cfg.n_pos, "query_pos": cfg.n_pos, "key_pos": cfg.n_pos, "head": cfg.n_heads,
            "d_head": cfg.d_head, "d_model": cfg.d_model, "d_mlp": cfg.d_mlp, "1": 1}  # fmt: skip


def activation_numel(model, name: str, batch: int) -> int:
    """Elements of the activation at hook `name` for `batch` clips, from the hook point's axes."""
    sizes = _axis_sizes(model.cfg, batch)
    return math.prod(sizes[a] for a in model.hook_dict[name].axes.split())


def _in_range(name: str, start: int, stop: int, n_layers: int) -> bool:
    m = re.match(r"blocks\.(\d+)\.", name)
    if m:
        return start <= int(m[1]) < stop
    if name.startswith(("hook_embed", "hook_pos_embed")):
        return start == 0
    return stop == n_layers  # ln_final


def cache_bytes(model, names: Iterable[str], batch: int, *, incl_bwd: bool = False,
                start_at_layer: int | None = None, stop_at_layer: int | None = None) -> int:  # fmt: skip
    """Bytes `run_with_cache` stores for these hook names (twice that with their gradients)."""
    n = model.cfg.n_layers
    start, stop = start_at_layer or 0, n if stop_at_layer is None else stop_at_layer
    itemsize = next(model.parameters()).element_size()
    known = [nm for nm in names if nm in model.hook_dict and _in_range(nm, start, stop, n)]  # others: the caller says
    held = sum(activation_numel(model, nm, batch) for nm in known) * itemsize
    return held * (2 if incl_bwd else 1)


def forward_bytes(model, batch: int, *, patterns: bool = False, graph: bool = False) -> int:
    """The working set of one forward: a few residual-sized tensors and the MLP hidden layer, plus one layer's
    attention scores and pattern when they are materialised; with `graph`, what autograd keeps for backward."""
    cfg = model.cfg
    itemsize = next(model.parameters()).element_size()
    per_layer = batch * cfg.n_pos * (6 * cfg.d_model + 2 * cfg.d_mlp)
    pattern = 2 * batch * cfg.n_heads * cfg.n_pos**2 if patterns else 0
    layers = cfg.n_layers if graph else 1
    return (per_layer * layers + pattern * layers) * itemsize


# Available memory --------------------------------------------------------------------------------
def _cgroup_free() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text())
    except (OSError, ValueError):
        return None


def available_bytes(device: str | torch.device | None = None) -> int | None:
    """Memory free for new tensors on `device` (None: unknown, and the guard lets the run go)."""
    device = torch.device(device if device is not None else "cpu")
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    cgroup = _cgroup_free()
    options = [v for v in (free, cgroup) if v is not None]
    return min(options) if options else None


# Guards ------------------------------------------------------------------------------------------
def check(need: int, what: str, device: str | torch.device | None, advice: str) -> None:
    """Raise MemoryGuardError if `need` bytes will not fit on `device` (unless VIVIT_LENS_NO_MEMORY_GUARD is set)."""
    if guard_disabled():
        return
    free = available_bytes(device)
    if free is None or need <= HEADROOM * free:
        return
    raise MemoryGuardError(
        f"{what} would hold about {_gib(need)}, but only {_gib(free)} is available on "
        f"{torch.device(device if device is not None else 'cpu')}; {advice}; or override the guard with "
        f"{ENV_OVERRIDE}=1"
    )


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def guard_cache(model, names: Sequence[str], batch: int, *, device=None, incl_bwd: bool = False,
                start_at_layer: int | None = None, stop_at_layer: int | None = None) -> None:  # fmt: skip
    """Refuse a `run_with_cache` whose cache (and forward) would not fit."""
    stored = cache_bytes(model, names, batch, incl_bwd=incl_bwd, start_at_layer=start_at_layer,
                         stop_at_layer=stop_at_layer)  # fmt: skip
    patterns = any(model.hook_dict[n].axes == _PATTERN_AXES for n in names)
    work = forward_bytes(model, batch, patterns=patterns, graph=incl_bwd)
    store_on = torch.device(device) if device is not None else _model_device(model)
    advice = (f"cache fewer hooks (names_filter: {len(names)} now), fewer layers (stop_at_layer), a smaller "
              f"batch ({batch} now), or store the cache elsewhere (device=)")  # fmt: skip
    if store_on == _model_device(model):
        check(stored + work, "run_with_cache", store_on, advice)
    else:
        check(stored, "the cache of run_with_cache", store_on, advice)
        check(work, "run_with_cache", _model_device(model), advice)


def _hooks_of(model, acts: str | Iterable) -> list[str]:
    """Hook names from an activation short name (`"z"`: every layer's `hook_z`), hook names, or Patch objects."""
    from vivit_lens.models.utils import get_act_name

    if isinstance(acts, str):
        if acts in model.hook_dict:
            return [acts]
        if acts in ("embed", "pos_embed"):
            return [f"hook_{acts}"]
        try:
            return [get_act_name(acts, layer) for layer in range(model.cfg.n_layers)]
        except ValueError:  # not an activation name: the sweep itself says so
            return []
    if not isinstance(acts, (list, tuple)):  # a generator is the caller's to consume
        return []
    out = []
    for a in acts:
        out += [a.hook] if hasattr(a, "hook") else _hooks_of(model, a)
    return out


def guard_patching(model, x: Tensor, batch_size: int, acts: str | Iterable = (), source=None) -> None:
    """Refuse a patching sweep whose batched runs would not fit, and a source cache holding NaN or inf.

    `x`: the target input (B clips; each patched run patches all B); `acts`: the activation short name
    (`"pattern"`), hook names, or the Patch objects of the sweep; `source`: the cache patched in.
    """
    clips = x.shape[0] if isinstance(x, Tensor) and x.ndim else 1
    hooks = _hooks_of(model, acts)
    patterns = any(model.hook_dict[h].axes == _PATTERN_AXES for h in hooks if h in model.hook_dict)
    # the target run's cache is held while `batch_size` patched runs of all B clips go at once
    need = forward_bytes(model, clips * (batch_size + 1), patterns=patterns)
    advice = f"use a smaller batch_size ({batch_size} now), fewer clips at once ({clips} now) or fewer layers"
    check(need, "this patching sweep", _model_device(model), advice)
    for name in hooks if source is not None else ():
        t = source.get(name)
        if isinstance(t, Tensor) and t.is_floating_point() and t.device.type != "meta" and not t.isfinite().all():
            raise ValueError(f"the source cache holds NaN or inf at {name!r}; patching it in would make the "
                             "results NaN")  # fmt: skip


def guard_attribution(model, x: Tensor, names: Sequence[str]) -> None:
    """Refuse an attribution patch whose cached runs (`names`), gradients and autograd graph would not fit."""
    batch = x.shape[0] if isinstance(x, Tensor) and x.ndim else 1
    held = 3 * cache_bytes(model, names, batch)  # source, reference and gradients
    need = held + forward_bytes(model, batch, graph=True)
    advice = f"attribute fewer clips at once (batch {batch} now) or run it on a device with more memory"
    check(need, "attribution_patch", _model_device(model), advice)


_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def keep_freed_memory(mmap_threshold: int = 32 * 2**20) -> bool:
    """Let glibc keep freed memory for reuse instead of handing it back to the OS: blocks up to
    `mmap_threshold` bytes come from the heap, and the heap is never trimmed.

    Every cache or patching run holds activations that the next run frees and allocates again; by default
    glibc returns blocks of a few MB to the OS on free, so each run faults fresh pages in (and zeroes them).
    On ViViT-B that made `run_with_cache` of resid / attn_out / mlp_out / z 1.29x a plain forward, 1.00x with
    this (medians of 9, one side-by-side run: `bench_memory.py --scenarios cache,cache_kept`, RESULTS.md). Process-wide: the memory stays with the process until it exits. The
    `vivit-lens` command calls it; a library does not change its host's allocator unasked. Returns False where
    there is no glibc (macOS, Windows, musl), where it does nothing.
    """
    import ctypes
    import ctypes.util
    import platform

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    # 2**31 - 1: the largest trim threshold an int takes; a heap top of 2 GiB free stays before any trim.
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


__all__ = ["ENV_OVERRIDE", "MemoryGuardError", "activation_numel", "available_bytes", "cache_bytes", "check", "keep_freed_memory",
           "forward_bytes", "guard_attribution", "guard_cache", "guard_patching"]  # fmt: skip
