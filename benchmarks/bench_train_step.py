"""Benchmark: one training step of the shipped small ViViT, ours next to transformers', on the same batch.

    python benchmarks/bench_train_step.py                  # 16 clips, 2 threads, median of 20 steps
    python benchmarks/bench_train_step.py --steps 50 --threads 2 --json out.json

A step is what `vivit_lens.train` does per batch: uint8 clips -> model input (ours: `video.preprocess`;
reference: `VivitImageProcessor`), forward, cross-entropy, backward, gradient clipping, AdamW. Both
models start from the shipped weights (its config leaves HF's dropout at 0), with the same batch, the same
optimiser settings, the math attention backend and the same threads. The two first losses are printed to show
the steps compute the same thing.
Ratios are reference / ours: above 1 means ours is faster.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import VivitForVideoClassification, VivitImageProcessor

from vivit_lens import synthetic
from vivit_lens.models.auto import from_pretrained
from vivit_lens.io.assets import tiny_model_path
from vivit_lens.train import to_pixels


def timed(step, n: int) -> list[float]:
    step()  # warm-up
    out = []
    for _ in range(n):
        t = time.perf_counter()
        step()
        out.append(time.perf_counter() - t)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    shipped = tiny_model_path()
    x, y = synthetic.dataset(args.batch, seed=0)
    target = torch.from_numpy(y)

    ours = from_pretrained(shipped).train()
    ref = VivitForVideoClassification.from_pretrained(shipped, attn_implementation="sdpa").train()
    hf_processor = VivitImageProcessor.from_pretrained(shipped)
    opt_ours = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-4)

    def input_ours():
        return to_pixels(x, ours.processor)

    def input_ref():
        return hf_processor([list(clip) for clip in x], return_tensors="pt").pixel_values

    def step(model, opt, pixels_of, loss_of):
        def run():
            loss = loss_of(model, pixels_of())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            return loss
        return run

    def loss_ours(model, pixels):
        return F.cross_entropy(model(pixels), target)

    def loss_ref(model, pixels):
        return F.cross_entropy(model(pixel_values=pixels).logits, target)

    with torch.no_grad():
        first = float(loss_ours(ours, input_ours())), float(loss_ref(ref, input_ref()))
    rows = {}
    with sdpa_kernel(SDPBackend.MATH):
        rows["input (uint8 clips -> pixel_values)"] = (timed(input_ref, args.steps), timed(input_ours, args.steps))
        rows["whole step (input, forward, backward, AdamW)"] = (
            timed(step(ref, opt_ref, input_ref, loss_ref), args.steps),
            timed(step(ours, opt_ours, input_ours, loss_ours), args.steps))
    print(f"batch of {args.batch} clips {x.shape[1:]}, {args.threads} threads, median of {args.steps}")
    print(f"first loss: ours {first[0]:.6f}, transformers {first[1]:.6f}")
    result = {"batch": args.batch, "threads": args.threads, "steps": args.steps, "first_loss": first, "rows": {}}
    print(f"{'':48s} {'transformers':>13s} {'ours':>9s} {'ratio':>7s}")
    for name, (r, o) in rows.items():
        mr, mo = statistics.median(r), statistics.median(o)
        print(f"{name:48s} {mr * 1000:10.1f} ms {mo * 1000:6.1f} ms {mr / mo:6.2f}x")
        result["rows"][name] = {"transformers_ms": mr * 1000, "ours_ms": mo * 1000, "ratio": mr / mo}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
