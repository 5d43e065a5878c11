"""Pairs per minute of a study, serial vs N Ray workers on this machine, with the cost of starting the cluster.

    python benchmarks/bench_ray.py                    # the shipped model, 12 bowling pairs, 2 workers
    python benchmarks/bench_ray.py --pairs 24 --workers 2 --json out.json

Runs `analysis.study` on the same pairs twice: serially in this process (torch threads: all cores), then on a
local Ray cluster of `--workers` workers (one model replica each, cores divided among them). Reports the
wall time of each, the cluster's start (ray.init + replicas built) and stop, pairs per minute with and
without the start, and whether the results are identical (the JSON, compared byte for byte) to a serial run at
the workers' thread count, and to the timed serial run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    from vivit_lens import HookedViViT, analysis
    from vivit_lens.assets import tiny_model_path
    from vivit_lens.distributed import RayRunner

    model = HookedViViT.from_pretrained(tiny_model_path())
    pairs = {"bowling": analysis.generate_pairs(model, "bowling", a.pairs, seed=0)}
    opts = dict(n_boot=500, k_folds=2, progress=False)
    t = time.perf_counter()
    serial = analysis.jsonable(analysis.study(model, pairs, **opts))
    t_serial = time.perf_counter() - t
    t = time.perf_counter()
    runner = RayRunner(model, workers=a.workers)
    t_start = time.perf_counter() - t
    t = time.perf_counter()
    distributed = analysis.jsonable(analysis.study(model, pairs, runner=runner, **opts))
    t_ray = time.perf_counter() - t
    t = time.perf_counter()
    runner.close()
    t_stop = time.perf_counter() - t
    # Bit for bit only at the workers' thread count: other counts may round differently (RESULTS.md).
    threads = torch.get_num_threads()
    torch.set_num_threads(runner.placement[0][2])
    try:
        serial_same_threads = analysis.jsonable(analysis.study(model, pairs, **opts))
    finally:
        torch.set_num_threads(threads)
    same = json.dumps(serial_same_threads, sort_keys=True) == json.dumps(distributed, sort_keys=True)
    same_as_timed = json.dumps(serial, sort_keys=True) == json.dumps(distributed, sort_keys=True)
    n = a.pairs
    rec = {"pairs": n, "workers": a.workers, "threads_serial": torch.get_num_threads(), "serial_s": t_serial,
           "ray_s": t_ray, "ray_start_s": t_start, "ray_stop_s": t_stop,
           "pairs_per_min_serial": 60 * n / t_serial, "pairs_per_min_ray": 60 * n / t_ray,
           "pairs_per_min_ray_incl_start_stop": 60 * n / (t_ray + t_start + t_stop),
           "identical_to_serial_at_worker_threads": same, "identical_to_serial_timed": same_as_timed}  # fmt: skip
    print(f"{n} pairs: serial {t_serial:.1f} s ({rec['pairs_per_min_serial']:.1f} pairs/min); {a.workers} Ray workers "
          f"{t_ray:.1f} s ({rec['pairs_per_min_ray']:.1f} pairs/min), cluster start {t_start:.1f} s and stop "
          f"{t_stop:.1f} s ({rec['pairs_per_min_ray_incl_start_stop']:.1f} pairs/min with them); speed-up "
          f"{t_serial / t_ray:.2f}x ({t_serial / (t_ray + t_start + t_stop):.2f}x with start and stop); results "
          f"identical to a serial run at the workers' thread count: {same}; to the timed serial run "
          f"({torch.get_num_threads()} threads): {same_as_timed}")  # fmt: skip
    if a.json:
        from vivit_lens.atomic import write_text

        write_text(a.json, json.dumps(rec, indent=1))


if __name__ == "__main__":
    main()
