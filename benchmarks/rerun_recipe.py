"""Rerun the shipped model's training recipe and compare what comes out with what was shipped.

    python benchmarks/rerun_recipe.py --out /tmp/rerun --json benchmarks/results/recipe_rerun.json
    python benchmarks/rerun_recipe.py --out /tmp/rerun --compare-only     # a folder a rerun already filled

The training commands of the shipped `training.json` (`recipe.commands`, every `python -m vivit_lens.train` line) run
one after another in `--out`, as written there (each stage `--init-from` the folder of the one before), with
`--no-progress`; each is timed from outside as well as by its own record. Then, per stage, the rerun's figures
(held-out and training accuracy, held-out loss, the loss every 25 steps, the periodic evaluations and the outcome
monitor) are compared with the shipped record's, and the last stage's weights with the shipped weights, tensor by
tensor. Bit-identical weights need what `training.json` says under "reproducibility": the same torch version,
thread count, attention backend and kind of CPU. Run nothing else on the machine meanwhile: the times are the point.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from vivit_lens.io.assets import tiny_model_path
from vivit_lens.train import cpu_name, recipe_arguments

SCALARS = ("heldout_accuracy", "heldout_loss", "train_accuracy", "final_loss_mean_last_25")
FIGURES = (*SCALARS, "loss_every_25_steps", "history")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compare(out: Path, shipped_dir: Path, process_seconds: list[float | None]) -> dict:
    shipped = json.loads((shipped_dir / "training.json").read_text())
    shipped_stages = [*shipped.get("earlier_stages", []), shipped]
    commands = recipe_arguments(shipped)
    if len(commands) != len(shipped_stages):
        raise SystemExit(f"the recipe lists {len(commands)} training commands but the record {len(shipped_stages)} "
                         f"stages")
    stages = []
    for i, (args, ref) in enumerate(zip(commands, shipped_stages)):
        folder = out / args[args.index("--out") + 1]
        rec = json.loads((folder / "training.json").read_text())
        ours = {k: v for k, v in rec["train_config"].items() if k not in ("init_from", "progress")}
        theirs = {k: ref["train_config"].get(k, v) for k, v in ours.items()}  # older records lack newer settings
        stages.append({
            "command": rec["command"], "wall_seconds": rec["wall_seconds"], "process_seconds": process_seconds[i],
            "shipped_wall_seconds": ref["wall_seconds"], "train_config_as_shipped": ours == theirs,
            "figures_equal_to_shipped": {k: rec[k] == ref[k] for k in FIGURES},
            "shipped": {k: ref[k] for k in SCALARS},
            **{k: rec[k] for k in FIGURES}})
    final = out / commands[-1][commands[-1].index("--out") + 1] / "model.safetensors"
    ours, theirs = load_file(final), load_file(shipped_dir / "model.safetensors")
    if ours.keys() != theirs.keys():
        raise SystemExit(f"{final} holds other tensors than the shipped weights: {sorted(ours.keys() ^ theirs.keys())}")
    return {
        "what": "the shipped model's training stages rerun with the commands of its training.json recipe, one after "
                "another, compared with the shipped record and weights",
        "torch_version": torch.__version__, "numpy_version": np.__version__,
        "python_version": platform.python_version(), "machine": platform.machine(), "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "stages": stages,
        "total_wall_seconds": round(sum(s["wall_seconds"] for s in stages), 1),
        "total_process_seconds": None if None in process_seconds else round(sum(process_seconds), 1),
        "shipped_total_wall_seconds": shipped.get("total_wall_seconds", shipped["wall_seconds"]),
        "final_weights": {
            "tensors": len(ours), "identical_to_shipped": all(torch.equal(ours[k], theirs[k]) for k in ours),
            "max_abs_diff": max(float((ours[k].double() - theirs[k].double()).abs().max()) for k in ours),
            "sha256": sha256(final), "shipped_sha256": sha256(shipped_dir / "model.safetensors")},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder for the stages (created)")
    p.add_argument("--compare-only", action="store_true", help="compare a folder a rerun already filled")
    p.add_argument("--json", default=None, help="write the comparison here")
    args = p.parse_args()
    out, shipped_dir = Path(args.out), tiny_model_path()
    commands = recipe_arguments(json.loads((shipped_dir / "training.json").read_text()))
    seconds: list[float | None] = [None] * len(commands)
    if not args.compare_only:
        out.mkdir(parents=True, exist_ok=True)
        for i, words in enumerate(commands):
            cmd = [sys.executable, "-m", "vivit_lens.train", *words, "--no-progress"]
            print("==", shlex.join(cmd), flush=True)
            t = time.perf_counter()
            with open(out / f"stage{i + 1}.log", "w") as log:
                subprocess.run(cmd, cwd=out, stdout=log, stderr=subprocess.STDOUT, check=True)
            seconds[i] = round(time.perf_counter() - t, 1)
            print(f"   {seconds[i]} s", flush=True)
    result = compare(out, shipped_dir, seconds)
    for i, s in enumerate(result["stages"], 1):
        same = all(s["figures_equal_to_shipped"].values())
        print(f"stage {i}: {s['wall_seconds']:7.1f} s (shipped {s['shipped_wall_seconds']:7.1f} s)  figures "
              f"{'identical to' if same else 'DIFFERENT from'} the shipped record's  settings "
              f"{'as shipped' if s['train_config_as_shipped'] else 'DIFFERENT'}")
    w = result["final_weights"]
    print(f"total {result['total_wall_seconds']} s (shipped {result['shipped_total_wall_seconds']} s); final weights "
          f"{'bit-identical to' if w['identical_to_shipped'] else 'different from'} the shipped ones "
          f"({w['tensors']} tensors, max |diff| {w['max_abs_diff']:.3g})")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
