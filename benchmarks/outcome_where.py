"""Where the shipped model's outcome is linearly readable: [CLS], the mean of the outcome-box tokens, the mean of all
patch tokens, after every block.

    python benchmarks/outcome_where.py            # 200 pairs per domain (seeds 0-199, the study's), about 10 s
    python benchmarks/outcome_where.py 100

Grouped 5-fold probes over pairs (`vivit_lens.probes.grouped_cv_probes`, a pair never on both sides of a split), with
the shuffled-label control. The [CLS] row is what `benchmarks/outcome_world.py` measures (an independent loop: the two
must agree); the other two say whether an outcome absent from [CLS] is present in the tokens where it happens. The box
differs from pair to pair, so the three readings come from one forward of each pair (with the poolings of
`probes.collect_activations` for [CLS] and the mean), not from `collect_activations` itself (one pooling per call).
"""

from __future__ import annotations

import sys
import time

import torch

from vivit_lens import HookedViViT, analysis, assets
from vivit_lens.interp.probes import _pool
from vivit_lens.probes import grouped_cv_probes


def readings(model: HookedViViT, action: str, n: int) -> tuple[dict[str, torch.Tensor], torch.Tensor,
                                                                torch.Tensor]:
    """Per reading `[layer 2n d_model]` (each pair's clean, then corrupt clip), the outcome labels, the pair index."""
    names = [f"blocks.{l}.hook_resid_post" for l in range(model.cfg.n_layers)]
    feats: dict[str, list[torch.Tensor]] = {"cls": [], "box": [], "all": []}
    for p in analysis.generate_pairs(model, action, n, seed=0):
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.cat([p.clean, p.corrupt]), names_filter=names)
        r = torch.stack([cache[name] for name in names])  # layer clip pos d_model
        feats["cls"].append(_pool(r, "cls", model))  # the poolings of probes.collect_activations
        feats["box"].append(r[:, :, list(p.region.positions)].mean(2))
        feats["all"].append(_pool(r, "mean", model))
    return ({k: torch.cat(v, 1).double() for k, v in feats.items()}, torch.tensor([0, 1] * n),
            torch.arange(n).repeat_interleave(2))


def main() -> None:
    torch.set_num_threads(2)
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    model = HookedViViT.from_pretrained(assets.tiny_model_path())
    for action in ("bowling", "golf_putt"):
        t = time.perf_counter()
        feats, y, pair = readings(model, action, n)
        print(f"{action}: {n} pairs ({time.perf_counter() - t:.0f} s); "
              f"accuracy after blocks 0-{model.cfg.n_layers - 1}")
        for name, f in feats.items():
            res = grouped_cv_probes(f, y, pair, k=5)
            best = max(res, key=lambda r: r["test"])
            print(f"  {name:4s} " + " ".join(f"{r['test']:.3f}" for r in res)
                  + f"  best {best['test']:.3f} [{best['test_lo']:.3f}, {best['test_hi']:.3f}]  control "
                  + " ".join(f"{r['control']:.2f}" for r in res))


if __name__ == "__main__":
    main()
