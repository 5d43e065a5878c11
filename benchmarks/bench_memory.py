"""Where memory goes: attribution patching (ours vs a straightforward reference, and vs the previous
implementation) and `run_with_cache` of resid / attn_out / mlp_out / z, each against one plain forward.

    python benchmarks/bench_memory.py                      # ViViT-B, random weights, [1, 32, 3, 224, 224]
    python benchmarks/bench_memory.py --frames 8 --reps 3  # a quicker, smaller input (fewer tokens)

Each scenario runs in its own subprocess, so that its peak RSS belongs to it alone; inside it, the plain
forward and the scenario alternate `--reps` times (interleaved: machine load hits both alike) and the
medians are compared. Scenarios:
- `attribution`: `attribution_patch` of every head x position (+ q/k/v, attn/mlp out, resid), 2 forwards and
  1 backward, keeping differences and the receivers' gradients;
- `reference`: the same node attributions the straightforward way (TransformerLens' `run_with_cache` of the
  clean run, then of the corrupt run with `incl_bwd=True`, then `(clean - corrupt) * grad`);
- `previous`: the implementation before this change, read from git (`--previous REV`; skipped without git);
- `cache`: `run_with_cache` of every resid_pre / resid_mid / resid_post / attn_out / mlp_out / z;
- `NAME_kept` (e.g. `cache_kept`): NAME in a process where `memory.keep_freed_memory()` has run, as in the
  `vivit-lens` command (glibc keeps freed blocks for the next run instead of faulting fresh pages in).
The attributions of `attribution` and `reference` are compared (max |difference| of the [layer pos head] map).
Prints ratios; never asserts on time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LABEL = 3
CACHED = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_z")
PREVIOUS = "0df8a07"  # the last commit whose attribution kept both runs' activations


def build(frames: int):
    from transformers import VivitConfig

    from vivit_lens import HookedViViT
    from vivit_lens.config import ViViTConfig

    cfg = ViViTConfig.from_hf_dict(VivitConfig(num_labels=400, num_frames=frames).to_dict())
    torch.manual_seed(0)
    model = HookedViViT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, frames, 3, 224, 224, generator=g) * 4 - 3
    corrupt = clean.clone()
    corrupt[:, frames // 2 :, :, 64:160, 64:160] = torch.rand(1, frames - frames // 2, 3, 96, 96, generator=g) * 4 - 3
    return model, clean, corrupt


def tl_reference(model, clean, corrupt) -> torch.Tensor:
    """The TransformerLens recipe by hand: cache the clean run, cache the corrupt run with a graph, backward."""
    z = [f"blocks.{l}.attn.hook_z" for l in range(model.cfg.n_layers)]
    names = lambda n: n.endswith(CACHED) or n.endswith(("hook_q", "hook_k", "hook_v"))  # noqa: E731
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    acts: dict[str, torch.Tensor] = {}

    def keep(t, hook):
        t.retain_grad()
        acts[hook.name] = t

    with torch.enable_grad(), model.hooks([(names, keep)]):
        logits = model(corrupt)
        logits[:, LABEL].sum().backward()
    for p in model.parameters():
        p.grad = None
    nodes = {n: ((clean_cache[n] - a.detach()) * a.grad).sum(-1)[0] for n, a in acts.items()}
    return torch.stack([nodes[n] for n in z])


def _load_previous(rev: str):
    for where in ("vivit_lens/interp/attribution.py", "vivit_lens/attribution.py"):  # after / before the subpackages
        got = subprocess.run(["git", "show", f"{rev}:{where}"], capture_output=True, text=True)
        if got.returncode == 0:
            break
    got.check_returncode()
    src = got.stdout
    path = Path(tempfile.mkdtemp()) / "attribution_previous.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("attribution_previous", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_scenario(name: str, frames: int, reps: int, out: str, previous: str) -> None:
    from vivit_lens.attribution import attribution_patch
    from vivit_lens.metrics import Logit

    torch.set_num_threads(2)
    label, name = name, name.removesuffix("_kept")
    if label != name:  # "<scenario>_kept": the same with glibc keeping freed memory (what vivit-lens does)
        from vivit_lens.interp.memory import keep_freed_memory

        if not keep_freed_memory():
            raise SystemExit("keep_freed_memory: no glibc here")
    model, clean, corrupt = build(frames)
    if name == "attribution":
        fn = lambda: attribution_patch(model, clean, corrupt, Logit(LABEL)).head_out_by_pos  # noqa: E731
    elif name == "previous":
        prev = _load_previous(previous)
        fn = lambda: prev.attribution_patch(model, clean, corrupt, Logit(LABEL)).head_out_by_pos  # noqa: E731
    elif name == "reference":
        fn = lambda: tl_reference(model, clean, corrupt)  # noqa: E731
    elif name == "cache":
        fn = lambda: model.run_with_cache(clean, names_filter=lambda n: n.endswith(CACHED))  # noqa: E731
    else:
        raise SystemExit(f"unknown scenario {name}")
    with torch.no_grad():
        model(clean)  # warm-up
    fwd, times, result = [], [], None
    for _ in range(reps):
        result = None  # nothing of the previous run stays alive during this one
        t = time.perf_counter()
        with torch.no_grad():
            model(clean)
        fwd.append(time.perf_counter() - t)
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    rec = {"scenario": label, "frames": frames, "forward_s": fwd, "scenario_s": times,
           "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}  # fmt: skip
    if name in ("attribution", "reference", "previous"):
        torch.save(result.detach(), out + ".pt")
    Path(out).write_text(json.dumps(rec))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=32, help="input frames (32: full ViViT-B, 3137 tokens)")
    p.add_argument("--reps", type=int, default=5, help="interleaved runs of each scenario and the forward")
    p.add_argument("--scenarios", default="attribution,reference,previous,cache,cache_kept",
                   help="comma-separated; NAME_kept runs NAME with memory.keep_freed_memory() (as the CLI does)")
    p.add_argument("--previous", default=PREVIOUS, help="git revision of the previous attribution implementation")
    p.add_argument("--json", default=None, help="also write every record to this file")
    p.add_argument("--run", default=None, help=argparse.SUPPRESS)  # internal: one scenario in this process
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.run:
        return run_scenario(a.run, a.frames, a.reps, a.out, a.previous)
    tmp = Path(tempfile.mkdtemp())
    recs = {}
    for name in a.scenarios.split(","):
        out = str(tmp / name)
        cmd = [sys.executable, __file__, "--run", name, "--frames", str(a.frames), "--reps", str(a.reps),
               "--out", out, "--previous", a.previous]  # fmt: skip
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            print(f"{name}: failed ({r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode})")
            continue
        recs[name] = json.loads(Path(out).read_text())
        rec = recs[name]
        f, s = statistics.median(rec["forward_s"]), statistics.median(rec["scenario_s"])
        rec["ratio_median"] = s / f
        rec["ratio_min"] = min(rec["scenario_s"]) / min(rec["forward_s"])
        print(f"{name:12s} {s:7.2f} s median ({', '.join(f'{t:.2f}' for t in rec['scenario_s'])}) vs forward "
              f"{f:.2f} s: {rec['ratio_median']:.2f}x median, {rec['ratio_min']:.2f}x on minima; peak RSS "
              f"{rec['peak_rss_gib']:.2f} GiB", flush=True)  # fmt: skip
    ours = tmp / "attribution.pt"
    for other in ("reference", "previous"):
        if ours.exists() and (tmp / f"{other}.pt").exists():
            a_, b_ = torch.load(ours), torch.load(tmp / f"{other}.pt")
            diff = (a_.double() - b_.double()).abs().max().item()
            recs.setdefault("agreement", {})[other] = diff
            print(f"attribution vs {other}: max |difference| of the [layer pos head] map {diff:.2e} "
                  f"(values up to {a_.abs().max().item():.2e})")  # fmt: skip
    if a.json:
        from vivit_lens.atomic import write_text

        write_text(a.json, json.dumps(recs, indent=1))


if __name__ == "__main__":
    main()
