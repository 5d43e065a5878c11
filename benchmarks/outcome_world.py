"""What the shipped model computes about outcomes, measured on fresh minimal pairs: the hidden / present /
transfer / causal figures of the outcome world, with their N and 95% bootstrap CIs over pairs.

    python benchmarks/outcome_world.py --pairs 100 --probe-pairs 200 --json benchmarks/results/outcome_world.json
    python benchmarks/outcome_world.py --model vivit_lens/assets/tiny_vivit --record   # also into training.json

Pairs are rendered from seeds `--seed ..` (default 0), which no training clip of the shipped model uses
(`tests/test_shipped_model.py` checks it against the training plan). Patching needs `--pairs` pairs per domain
(about 2 s each here); the probes and the hidden checks use `--probe-pairs` (forwards only).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

import vivit_lens
from vivit_lens import HookedViViT, analysis, assets
from vivit_lens.probes import best_record


def summarise(st: dict) -> dict:
    """The headline figures of a study: hidden, present (best layer and curve), transfer, causal."""
    out: dict = {"domains": {}, "transfer": {}}
    for dom, d in st["domains"].items():
        ci = d["ci"]
        head = np.asarray(ci["head_recovery"]["mean"], float)
        l, h = np.unravel_index(int(np.abs(head).argmax()), head.shape)
        ratio = np.asarray(ci["region_mass_ratio"]["mean"], float)
        rl, rh = np.unravel_index(int(ratio.argmax()), ratio.shape)
        probe = st["probe"][dom]

        def at(key, *idx):
            return [float(np.asarray(ci[key][k], float)[idx]) for k in ("mean", "lo", "hi")]

        out["domains"][dom] = {
            "hidden": d["hidden"],
            "present": {"best_layer": probe["best_layer"], "n_pairs": probe["n_pairs"], "k": probe["k"],
                        "best": {k: probe["best"][k] for k in ("test", "test_lo", "test_hi", "control", "control_lo",
                                                                 "control_hi", "train", "control_train")},
                        "by_layer": [[r["layer"], r["test"], r["test_lo"], r["test_hi"], r["control"]]
                                     for r in probe["records"]]},
            "causal": {"n_pairs": d["n"],
                       "attention_recovery_by_layer": [at("attention_recovery", i) for i in d["layers"]],
                       "mlp_recovery_by_layer": [at("mlp_recovery", i) for i in d["layers"]],
                       "strongest_head": {"layer": int(l), "head": int(h), "recovery": at("head_recovery", l, h)},
                       "head_most_on_region": {"layer": int(rl), "head": int(rh),
                                               "mass_over_uniform": at("region_mass_ratio", rl, rh)}},
        }  # fmt: skip
    for name, rec in st.get("transfer", {}).items():
        best = best_record(rec)
        out["transfer"][name] = {"best_layer": best["layer"], "test": best["test"], "lo": best["test_lo"],
                                 "hi": best["test_hi"], "by_layer": [round(r["test"], 4) for r in rec]}  # fmt: skip
    out["warnings"] = st.get("warnings", [])
    return out


def shipped_pair_attention(model: HookedViViT) -> dict:
    """On each shipped pair's clean clip: the head whose readout attention ([CLS]'s row on ViViT, the mean of every
    query's row on a mean-pooling VideoMAE) puts the most mass on the outcome region, as a multiple of the uniform
    share (region tokens / all tokens), read off `hook_pattern` with a plain hook. `ceiling` = 1 / share, the
    multiple of a head that attends to nothing else."""
    out = {}
    for action in assets.pairs():
        pair = analysis.load_pair(model, *assets.pair_paths(action)[:2])
        positions = torch.tensor(pair.region.positions)
        rows, queries = {}, list(model.readout_positions)
        hooks = [(f"blocks.{l}.attn.hook_pattern",
                  lambda t, hook: rows.__setitem__(hook.name, t[0, :, queries].mean(1).clone()))
                 for l in range(model.cfg.n_layers)]  # fmt: skip
        with torch.no_grad():
            model.run_with_hooks(pair.clean, fwd_hooks=hooks)
        share = len(positions) / model.cfg.n_pos
        ratio = torch.stack([rows[n][:, positions].sum(-1) for n, _ in hooks]) / share  # [layer head]
        l, h = divmod(int(ratio.argmax()), model.cfg.n_heads)
        out[action] = {"region_tokens": len(positions), "n_pos": model.cfg.n_pos, "share": share,
                       "ceiling": 1 / share, "best_head": [l, h], "mass_over_uniform": float(ratio[l, h])}  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="tiny_vivit", help="a checkpoint folder, or a shipped model (tiny_vivit, "
                   "tiny_videomae)")
    p.add_argument("--pairs", type=int, default=100, help="pairs per domain that are patched")
    p.add_argument("--probe-pairs", type=int, default=200, help="pairs per domain for the probes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the whole study and the summary here")
    p.add_argument("--record", action="store_true", help="write the summary into the model's training.json")
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    if args.model in assets.SHIPPED_MODELS:
        args.model = str(assets.tiny_model_path(args.model))
    model = vivit_lens.from_pretrained(args.model)
    n = max(args.pairs, args.probe_pairs)
    gen = {a: analysis.generate_pairs(model, a, n, seed=args.seed) for a in ("bowling", "golf_putt")}
    st = analysis.study(model, {a: g[: args.pairs] for a, g in gen.items()}, probe_pairs=gen, seed=args.seed,
                        progress=sys.stderr.isatty())  # fmt: skip
    summary = summarise(analysis.jsonable(st))
    summary["shipped_pairs_attention"] = shipped_pair_attention(model)
    cmd = shlex.join(["python", "benchmarks/outcome_world.py", *(sys.argv[1:] if argv is None else argv)])
    summary |= {"command": cmd, "pair_seeds": f"[{args.seed}, {args.seed + n}) per domain",
                "wall_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"summary": summary, "study": analysis.jsonable(st)}, indent=1) + "\n")
    if args.record:
        path = Path(args.model) / "training.json"
        record = json.loads(path.read_text())
        record["outcome_world"] = summary
        path.write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
