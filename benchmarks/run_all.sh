#!/usr/bin/env bash
# Every benchmark, one after another (they share the machine's cores; never run them in parallel),
# each printing its side-by-side table; the outputs land in benchmarks/results/. About an hour on 2 cores,
# and 40 minutes more for the last (the shipped model's training recipe, rerun).
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p benchmarks/results
run() { local name=$1; shift; echo "== $*"; "$@" 2>&1 | tee "benchmarks/results/$name.txt"; }
run model python benchmarks/bench_model.py
run videomae python benchmarks/bench_videomae.py --reps 7
run video python benchmarks/bench_video.py
run train_step python benchmarks/bench_train_step.py --steps 20 --json benchmarks/results/train_step.json
run paths python benchmarks/bench_paths.py --senders 3 --json benchmarks/results/paths.json
run patching python benchmarks/bench_patching.py --layers 3,8
run patching_full python benchmarks/bench_patching.py --layers all --no-second-ours   # about 32 minutes
run memory_full python benchmarks/bench_memory.py --json benchmarks/results/memory_full.json
run dtypes python benchmarks/dtypes.py --json benchmarks/results/dtypes.json
run ray python benchmarks/bench_ray.py --json benchmarks/results/ray.json
run gpu_check python benchmarks/gpu_check.py --json benchmarks/results/gpu_check.json   # on a CPU: "no GPU found", small size
run outcome_where python benchmarks/outcome_where.py
run outcome_world python benchmarks/outcome_world.py --pairs 100 --probe-pairs 200 --json benchmarks/results/outcome_world.json
run analyze bash -c 'cd "$(mktemp -d)" && /usr/bin/time -v vivit-lens analyze --no-progress 2>&1 | grep -E "Elapsed|Maximum resident"'
run recipe_rerun python benchmarks/rerun_recipe.py --out "$(mktemp -d)" --json benchmarks/results/recipe_rerun.json
