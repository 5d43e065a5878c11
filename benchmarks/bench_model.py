"""Forward speed and memory of HookedViViT vs transformers' ViViT, full-size, side by side in one run.

    python benchmarks/bench_model.py                 # all scenarios, full ViViT-B, [1, 32, 3, 224, 224]
    python benchmarks/bench_model.py --reps 3 --small  # a quick look on a small config

Timing scenarios run in one process, interleaved (HF, ours, ours+cache, HF, ...) so that machine
load hits both sides alike; memory scenarios (all twelve attention patterns) each run in a fresh
subprocess so that peak RSS belongs to that scenario alone. Random weights: speed does not depend
on values. Prints a table: ours, HF, ratio, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

FULL = {"num_labels": 400}
SMALL = dict(image_size=64, num_frames=8, tubelet_size=[2, 16, 16], hidden_size=192, num_hidden_layers=4,
             num_attention_heads=3, intermediate_size=768, num_labels=10)  # fmt: skip
CACHED = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_z")


def build(config: dict, attn: str = "sdpa", ours: bool = True, hf: bool = True):
    from transformers import VivitConfig, VivitForVideoClassification

    from vivit_lens import HookedViViT

    torch.manual_seed(0)
    ref = VivitForVideoClassification(VivitConfig(**config, attn_implementation=attn)).eval()
    with torch.no_grad():
        ref.vivit.embeddings.cls_token.normal_()
        ref.vivit.embeddings.position_embeddings.normal_()
    model = HookedViViT.from_hf_model(ref) if ours else None
    c = ref.config
    x = torch.rand(1, c.num_frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0)) * 4 - 3
    return (ref if hf else None), model, x


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def scenario_speed(config: dict, reps: int) -> dict:
    return interleaved_speed(*build(config), reps)


def interleaved_speed(ref, model, x, reps: int) -> dict:
    """HF sdpa forward, our forward and our `run_with_cache` (resid / attn_out / mlp_out / z), interleaved `reps`
    times so that machine load hits every side alike; also the logits' max abs difference and the peak RSS."""
    names = lambda n: n.endswith(CACHED)  # noqa: E731
    runs = {
        "hf_sdpa": lambda: ref(x).logits,
        "ours": lambda: model(x),
        "ours_cache": lambda: model.run_with_cache(x, names_filter=names),
    }
    with torch.no_grad():
        diff = (model(x) - ref(x).logits).abs().max().item()  # also the warm-up
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(reps):
            for k, fn in runs.items():
                times[k].append(timed(fn))
    return {"times": times, "logits_max_abs_diff": diff, "peak_rss_gib": peak_rss_gib()}


def scenario_patterns(config: dict, side: str) -> dict:
    with torch.no_grad():
        if side == "hf_eager_attn":
            ref, _, x = build(config, attn="eager", ours=False)
            ref(x)  # warm-up with the same allocation pattern is too costly at full size: one timed run
            t = timed(lambda: ref(x, output_attentions=True))
        else:
            _, model, x = build(config, hf=False)
            model(x)
            t = timed(lambda: model.run_with_cache(x, names_filter=lambda n: n.endswith("hook_pattern")))
    return {"times": {side: [t]}, "peak_rss_gib": peak_rss_gib()}


def run_child(args: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--small", action="store_true", help="a small config instead of ViViT-B")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scenario", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    config = SMALL if args.small else FULL
    if args.scenario:
        result = scenario_speed(config, args.reps) if args.scenario == "speed" else scenario_patterns(config, args.scenario)
        print(json.dumps(result))
        return

    common = ["--reps", str(args.reps), "--threads", str(args.threads)] + (["--small"] if args.small else [])
    speed = run_child(["--scenario", "speed", *common])
    hf_attn = run_child(["--scenario", "hf_eager_attn", *common])
    ours_attn = run_child(["--scenario", "ours_patterns", *common])
    t = {k: v for r in (speed, hf_attn, ours_attn) for k, v in r["times"].items()}
    med = {k: statistics.median(v) for k, v in t.items()}
    low = {k: min(v) for k, v in t.items()}

    which = "small config" if args.small else "full ViViT-B [1,32,3,224,224] fp32"
    print(f"# HookedViViT vs transformers ViViT: {which}, {args.threads} threads, torch {torch.__version__}")
    print(f"# logits max abs diff (ours vs HF sdpa): {speed['logits_max_abs_diff']:.2e}")
    print(f"# timing reps: {args.reps} interleaved (speed rows); 1 run each for the attention-pattern rows")
    print(f"{'scenario':52s} {'ours s (min/med)':>17s} {'HF s (min/med)':>17s} {'ratio (med)':>11s} {'peak RSS ours/HF GiB':>21s}")
    rows = [
        ("forward, no hooks  vs HF sdpa", "ours", "hf_sdpa", speed, speed),
        ("run_with_cache resid/attn_out/mlp_out/z  vs our forward", "ours_cache", "ours", speed, speed),
        ("run_with_cache all 12 hook_pattern  vs HF eager+attn", "ours_patterns", "hf_eager_attn", ours_attn, hf_attn),
    ]
    for title, a, b, ra, rb in rows:
        print(f"{title:52s} {low[a]:7.2f}/{med[a]:<7.2f}   {low[b]:7.2f}/{med[b]:<7.2f}   {med[a] / med[b]:9.3f}x"
              f"   {ra['peak_rss_gib']:6.2f} / {rb['peak_rss_gib']:.2f}")
    print("# speed rows share one process (both models loaded), so their RSS is the same process's peak")


if __name__ == "__main__":
    main()
