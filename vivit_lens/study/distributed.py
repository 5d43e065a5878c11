"""Running one function over many items (minimal pairs, batches of clips) in this process or on Ray workers.

A runner calls `fn(model, item)` for every item and returns the results in the items' order; an item whose
call raises becomes a `Failed` (its error in words) and the others go on. `SerialRunner` runs in this process
on the caller's model; `RayRunner` holds one model replica per Ray worker (a local cluster it starts and stops,
or an existing one at `address`) and keeps every worker busy. Both give the same results: each replica is the
caller's model (same weights, dtype and processor) and the per-item code is the same function.

    with RayRunner(model, workers=2) as runner:                # pip install "vivit_lens[distributed]"
        rows = runner.map(analyze_one, pairs, desc="study")    # [result or Failed, ...] in the pairs' order
    study(model, pairs, runner=runner)                         # what `vivit-lens study --workers 2` does
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

logger = logging.getLogger("vivit_lens.distributed")  # its name before the move, as in vivit_lens.io.video
INSTALL_HINT = "pip install 'vivit_lens[distributed]' (or pip install ray)"


class RayNotInstalledError(ImportError):
    """Ray is needed (workers or a cluster address were asked for) but is not installed."""


class WorkerError(RuntimeError):
    """A Ray cluster or worker could not be started or reached."""


@dataclass(frozen=True)
class Failed:
    """An item whose call raised: the error's type and message, in place of its result."""

    error: str

    @classmethod
    def of(cls, e: BaseException) -> Failed:
        return cls(f"{type(e).__name__}: {' '.join(str(e).split())}")


def import_ray():
    """The `ray` module, or a RayNotInstalledError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise RayNotInstalledError(f"Ray is not installed; {INSTALL_HINT}") from None
    return ray


def _call(fn: Callable, model, item: Any) -> Any:
    try:
        return fn(model, item)
    except Exception as e:  # noqa: BLE001 - one item's failure is reported with it; the others go on
        logger.debug("item failed", exc_info=True)
        return Failed.of(e)


class SerialRunner:
    """`fn(model, item)` for each item, one after the other, in this process."""

    workers = 1

    def __init__(self, model):
        self.model = model

    def imap(self, fn: Callable, items: Iterable) -> Iterator[Any]:
        for item in items:
            yield _call(fn, self.model, item)

    def map(self, fn: Callable, items: Iterable, *, total: int | None = None, desc: str = "", progress: bool = True,
            postfix: Callable[[Any], str] | None = None) -> list[Any]:  # fmt: skip
        """Results (or `Failed`) in the items' order, with one progress bar."""
        out = []
        with tqdm(total=_total(items, total), desc=desc, disable=not progress) as bar:
            for item in items:
                if postfix is not None:
                    bar.set_postfix_str(postfix(item))
                out.append(_call(fn, self.model, item))
                bar.update(1)
        return out


def _total(items: Iterable, total: int | None) -> int | None:
    return total if total is not None else (len(items) if hasattr(items, "__len__") else None)


class _Replica:
    """A Ray actor's state: one copy of the caller's model, built from its config, processor and weights."""

    def __init__(self, cfg, processor, state, dtype: torch.dtype, threads: int):
        from vivit_lens.models.vivit import HookedViViT

        torch.set_num_threads(threads)
        gpus = _ray_gpu_ids()
        device = torch.device("cuda", 0) if gpus else torch.device("cpu")  # Ray shows a worker only its own GPU
        self.model = HookedViViT(cfg, processor)
        self.model.load_state_dict(state)
        self.model.to(device=device, dtype=dtype)

    def call(self, fn: Callable, item: Any) -> Any:
        return _to_cpu(_call(fn, self.model, item))  # results travel to the caller's process as CPU tensors

    def where(self) -> tuple[str, str, int]:
        return str(self.model.cfg.device), str(self.model.cfg.dtype), torch.get_num_threads()


def _to_cpu(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.cpu()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_cpu(v) for v in x)
    if isinstance(x, dict):
        return {k: _to_cpu(v) for k, v in x.items()}
    return x


def _ray_gpu_ids() -> list:
    import ray

    return ray.get_gpu_ids()


class RayRunner:
    """One model replica on each of `workers` Ray workers; `map` spreads the items over them.

    `address=None`: start a local Ray cluster (as many CPUs as workers; one GPU per worker when this machine has
    GPUs) and stop it on `close()`. `address="HOST:PORT"` or `"auto"`: connect to an existing cluster (left
    running on close); `workers` defaults to its GPUs, or else its CPUs. `threads`: torch threads per worker
    (default: this machine's cores divided among the workers, at least 1). Use it as a context manager.
    """

    def __init__(self, model, workers: int | None = None, *, address: str | None = None, threads: int | None = None):
        ray = import_ray()
        if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
            raise ValueError(f"workers must be an int >= 1, got {workers!r}")
        if address is None and workers is None:
            raise ValueError("give workers= (a local cluster of that many workers) or address= (an existing cluster)")
        self._ray, self._own = ray, address is None
        local_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if self._own and local_gpus and workers > local_gpus:
            raise ValueError(f"{workers} workers need one GPU each, and this machine has {local_gpus}")
        if ray.is_initialized():
            raise WorkerError("Ray is already initialised in this process; call ray.shutdown() first")
        init = dict(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR, configure_logging=True)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # a study sends nothing anywhere unless asked to
        try:
            if self._own:
                ray.init(num_cpus=workers, num_gpus=local_gpus, **init)
            else:
                ray.init(address=address, **init)
        except Exception as e:  # noqa: BLE001 - unreachable address, failed start: one message for the user
            raise WorkerError(f"cannot {'start a local Ray cluster' if self._own else f'connect to Ray at {address!r}'}: "
                              f"{' '.join(str(e).split())}") from None  # fmt: skip
        try:
            self._start(model, workers, threads)
        except BaseException:
            self.close()
            raise

    def _start(self, model, workers: int | None, threads: int | None) -> None:
        ray = self._ray
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        if workers is None:
            workers = gpus or max(1, int(res.get("CPU", 1)))
        if gpus and workers > gpus:
            raise WorkerError(f"{workers} workers need one GPU each, and the Ray cluster has {gpus}")
        self.workers = workers
        threads = threads or max(1, (os.cpu_count() or 1) // workers)
        state = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})
        actor = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0, max_restarts=0)(_Replica)
        self._actors = [actor.remote(model.cfg, model.processor, state, model.cfg.dtype, threads)
                        for _ in range(workers)]  # fmt: skip
        try:
            self.placement = ray.get([a.where.remote() for a in self._actors])  # waits until every replica is built
        except Exception as e:  # noqa: BLE001
            raise WorkerError(f"a Ray worker could not build its model replica: {' '.join(str(e).split())}") from None

    def map(self, fn: Callable, items: Iterable, *, total: int | None = None, desc: str = "", progress: bool = True,
            postfix: Callable[[Any], str] | None = None) -> list[Any]:  # fmt: skip
        """Results (or `Failed`) in the items' order; items (a list or any iterable, e.g. a generator) are sent
        as workers free up, two in flight per worker, and one progress bar counts them all."""
        ray = self._ray
        fn_ref = ray.put(fn)
        results: dict[int, Any] = {}
        pending: dict[Any, tuple[int, Any]] = {}  # object ref -> (item index, actor)
        queue = enumerate(iter(items))
        free = [a for a in self._actors for _ in range(2)]
        with tqdm(total=_total(items, total), desc=desc, disable=not progress) as bar:
            while True:
                while free:
                    nxt = next(queue, None)
                    if nxt is None:
                        break
                    i, item = nxt
                    actor = free.pop(0)
                    pending[actor.call.remote(fn_ref, item)] = (i, actor)
                    if postfix is not None:
                        bar.set_postfix_str(postfix(item))
                if not pending:
                    break
                done, _ = ray.wait(list(pending), num_returns=1)
                i, actor = pending.pop(done[0])
                try:
                    results[i] = ray.get(done[0])
                    free.append(actor)
                except ray.exceptions.RayActorError as e:  # the worker died (out of memory, killed): it takes no more
                    results[i] = Failed(f"worker lost: {' '.join(str(e).split())[:300]}")
                except Exception as e:  # noqa: BLE001 - e.g. an item that cannot be sent; the worker goes on
                    results[i] = Failed.of(e)
                    free.append(actor)
                bar.update(1)
            for i, _item in queue:  # only when every worker was lost
                results[i] = Failed("every Ray worker was lost before this item ran")
        return [results[i] for i in range(len(results))]

    def close(self) -> None:
        """Release the replicas; stop the local cluster (an existing cluster is left running)."""
        if self._ray.is_initialized():
            for a in getattr(self, "_actors", []):
                self._ray.kill(a)
            self._ray.shutdown()

    def __enter__(self) -> RayRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


__all__ = ["Failed", "INSTALL_HINT", "RayNotInstalledError", "RayRunner", "SerialRunner", "WorkerError", "import_ray"]
