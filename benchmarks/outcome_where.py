"""Where the shipped model's outcome is linearly readable: [CLS], the mean of the outcome-box tokens, the mean of all
patch tokens, after every block.

    python benchmarks/outcome_where.py            # 200 pairs per domain (seeds 0-199, the study's), about 30 s
    python benchmarks/outcome_where.py 100

Grouped 5-fold probes over pairs (`vivit_lens.probes.grouped_cv_probes`, a pair never on both sides of a split), with
the shuffled-label control. The [CLS] row is what `benchmarks/outcome_world.py` measures (an independent loop: the two
must agree); the other two say whether an outcome absent from [CLS] is present in the tokens where it happens.
"""
import sys, time
import torch
from vivit_lens import HookedViViT, analysis, assets
from vivit_lens.probes import grouped_cv_probes

torch.set_num_threads(2)
model = HookedViViT.from_pretrained(assets.tiny_model_path())
n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
L = model.cfg.n_layers
for action in ("bowling", "golf_putt"):
    t = time.perf_counter()
    pairs = analysis.generate_pairs(model, action, n, seed=0)
    feats = {"cls": [], "box": [], "all": []}
    labels, groups = [], []
    for g, p in enumerate(pairs):
        box = list(p.region.positions)
        with torch.no_grad():
            _, cache = model.run_with_cache(torch.cat([p.clean, p.corrupt]),
                                            names_filter=lambda h: h.endswith("hook_resid_post"))
        r = torch.stack([cache[f"blocks.{l}.hook_resid_post"] for l in range(L)])  # layer batch pos d
        feats["cls"].append(r[:, :, 0]); feats["box"].append(r[:, :, box].mean(2)); feats["all"].append(r[:, :, 1:].mean(2))
        labels += [0, 1]; groups += [g, g]
    y, grp = torch.tensor(labels), torch.tensor(groups)
    print(f"{action}: {n} pairs ({time.perf_counter() - t:.0f} s); accuracy after blocks 0-{L - 1}")
    for name, f in feats.items():
        res = grouped_cv_probes(torch.cat(f, 1).double(), y, grp, k=5)
        best = max(res, key=lambda r: r["test"])
        print(f"  {name:4s} " + " ".join(f"{r['test']:.3f}" for r in res)
              + f"  best {best['test']:.3f} [{best['test_lo']:.3f}, {best['test_hi']:.3f}]  control "
              + " ".join(f"{r['control']:.2f}" for r in res))
