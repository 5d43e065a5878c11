"""Forward speed of HookedVideoMAE vs transformers' VideoMAE, full-size VideoMAE-B, side by side in one run.

    python benchmarks/bench_videomae.py                  # VideoMAE-B (Kinetics head), [1, 16, 3, 224, 224]
    python benchmarks/bench_videomae.py --reps 3 --small # a quick look on a small config

The runs are interleaved (HF sdpa, ours, ours + cache, HF sdpa, ...) so that machine load hits every side
alike; the table gives min and median seconds and the ratio of medians. Random weights: speed does not depend
on values. The MCG-NJU/videomae-base-finetuned-kinetics architecture is transformers' VideoMAEConfig defaults
with 400 labels.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from bench_model import interleaved_speed

FULL = {"num_labels": 400}
SMALL = {
    "image_size": 64, "num_frames": 8, "hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 3,
    "intermediate_size": 768, "num_labels": 10,
}  # fmt: skip


def build(config: dict):
    from transformers import VideoMAEConfig, VideoMAEForVideoClassification

    from vivit_lens import HookedVideoMAE

    torch.manual_seed(0)
    ref = VideoMAEForVideoClassification(VideoMAEConfig(**config, attn_implementation="sdpa")).eval()
    model = HookedVideoMAE.from_hf_model(ref)
    c = ref.config
    x = torch.randn(1, c.num_frames, 3, c.image_size, c.image_size, generator=torch.Generator().manual_seed(0))
    return ref, model, x


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--small", action="store_true", help="a small config instead of VideoMAE-B")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    res = interleaved_speed(*build(SMALL if args.small else FULL), args.reps)
    times, diff = res["times"], res["logits_max_abs_diff"]
    med = {k: statistics.median(v) for k, v in times.items()}
    low = {k: min(v) for k, v in times.items()}
    which = "small config" if args.small else "full VideoMAE-B [1,16,3,224,224] fp32 (1568 tokens)"
    print(f"# HookedVideoMAE vs transformers VideoMAE: {which}, {args.threads} threads, torch {torch.__version__}")
    print(f"# logits max abs diff (ours vs HF sdpa): {diff:.2e}; {args.reps} interleaved reps; peak RSS "
          f"{res['peak_rss_gib']:.2f} GiB (both models in one process)")  # fmt: skip
    print(f"{'scenario':48s} {'ours s (min/med)':>17s} {'ref s (min/med)':>17s} {'ratio (med)':>11s} {'(min)':>6s}")
    for label, a, b in (
        ("forward, no hooks  vs HF sdpa", "ours", "hf_sdpa"),
        ("run_with_cache resid/attn_out/mlp_out/z  vs HF", "ours_cache", "hf_sdpa"),
    ):
        ratios = f"{med[a] / med[b]:10.2f}x {low[a] / low[b]:5.2f}x"
        print(f"{label:48s} {low[a]:7.2f}/{med[a]:<9.2f} {low[b]:7.2f}/{med[b]:<9.2f} {ratios}")


if __name__ == "__main__":
    main()
