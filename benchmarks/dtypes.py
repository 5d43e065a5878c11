"""How far each float dtype is from float64, and whether its per-head map ranks heads as float32 does.

    python benchmarks/dtypes.py                       # the shipped model, and ViViT-B (random weights, 32 frames)
    python benchmarks/dtypes.py --vivit-frames 4      # ViViT-B with fewer frames (fewer tokens): quicker on a CPU
    python benchmarks/dtypes.py --device cuda         # on a GPU (bfloat16 and float16 are a GPU story)

For each model and dtype (float64, float32, bfloat16, float16) on one clean/corrupt pair: the logits, the
per-head patching map (every head's output patched clean -> corrupt at all positions, scored as % of the
final [CLS] residual's clean - corrupt signal recovered) and the per-layer attention and MLP block recoveries.
Reported: max |dtype - float64| of each (logits in logit units, the rest in recovery points), and the
agreement of the dtype's head map with float32's and with float64's (Spearman rank correlation, Pearson,
top-10 overlap). `--json FILE` keeps every number.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
import warnings

import torch

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def shipped_pair():
    from vivit_lens import HookedViViT, analysis
    from vivit_lens.assets import tiny_model_path

    model = HookedViViT.from_pretrained(tiny_model_path())
    p = analysis.generate_pairs(model, "bowling", 1, seed=5)[0]
    return "shipped tiny model", model, p.clean, p.corrupt


def vivit_b_pair(frames: int):
    from transformers import VivitConfig

    from vivit_lens import HookedViViT
    from vivit_lens.config import ViViTConfig

    cfg = ViViTConfig.from_hf_dict(VivitConfig(num_labels=400, num_frames=frames).to_dict())
    torch.manual_seed(0)
    model = HookedViViT(cfg)
    with torch.no_grad():
        for p in model.parameters():  # random weights at a scale where activations stay O(1)
            p.copy_(torch.randn(p.shape) / (p.shape[-1] ** 0.5 if p.ndim >= 2 else 2.0))
        for block in model.blocks:
            block.ln1.w.fill_(1.0), block.ln2.w.fill_(1.0)
        model.ln_final.w.fill_(1.0)
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, frames, 3, 224, 224, generator=g) * 4 - 3
    corrupt = clean.clone()
    corrupt[:, frames // 2 :, :, 64:160, 64:160] = torch.rand(1, frames - frames // 2, 3, 96, 96, generator=g) * 4 - 3
    return f"ViViT-B, random weights, {frames} frames ({cfg.n_pos} tokens)", model, clean, corrupt


def measure(model, clean, corrupt, dtype, device, batch_size: int) -> dict:
    from vivit_lens.metrics import SignalRecovery, final_resid_hook
    from vivit_lens.patching import get_act_patch_attn_head_out_all_pos, patch_sweep

    m = copy.deepcopy(model).to(device=device, dtype=dtype)  # each dtype from the original float32 weights
    t = time.perf_counter()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # low-precision recoveries warn; measuring that is the point
        logits, cc = m.run_with_cache(clean)
        _, rc = m.run_with_cache(corrupt)
        metric = SignalRecovery.from_caches(cc, rc, final_resid_hook(m), (0,))
        heads = get_act_patch_attn_head_out_all_pos(m, corrupt, cc, metric, batch_size=batch_size, progress=False)
        attn = patch_sweep(m, clean, corrupt, metric, "attn_out", batch_size=batch_size, progress=False).values
        mlp = patch_sweep(m, clean, corrupt, metric, "mlp_out", batch_size=batch_size, progress=False).values
    return {"logits": logits.double().cpu(), "heads": heads.double().cpu(), "attention": attn.double().cpu(),
            "mlp": mlp.double().cpu(), "seconds": time.perf_counter() - t}  # fmt: skip


def compare(name: str, runs: dict) -> list[dict]:
    from vivit_lens.attribution import agreement

    ref, f32 = runs[torch.float64], runs[torch.float32]
    rows = []
    print(f"\n{name}")
    print(f"{'dtype':9s} {'logits':>9s} {'heads':>9s} {'attn':>9s} {'mlp':>9s} {'rho f32':>8s} {'rho f64':>8s} "
          f"{'top10 f32':>9s} {'time':>7s}")  # fmt: skip
    print(f"{'':9s} {'max|d|':>9s} {'points':>9s} {'points':>9s} {'points':>9s}")
    for dt, r in runs.items():
        a32, a64 = agreement(f32["heads"], r["heads"], k=10), agreement(ref["heads"], r["heads"], k=10)
        row = {"dtype": str(dt).replace("torch.", ""), "seconds": r["seconds"],
               "logits_max_abs_diff": (r["logits"] - ref["logits"]).abs().max().item(),
               "logits_max_abs": ref["logits"].abs().max().item(),
               **{f"{k}_max_abs_diff_points": (r[k] - ref[k]).abs().max().item() for k in ("heads", "attention", "mlp")},
               "heads_spearman_vs_float32": a32["spearman"], "heads_spearman_vs_float64": a64["spearman"],
               "heads_pearson_vs_float32": a32["pearson"], "heads_top10_overlap_vs_float32": a32["topk_overlap"],
               "heads_max_abs_points": ref["heads"].abs().max().item()}  # fmt: skip
        rows.append(row)
        print(f"{row['dtype']:9s} {row['logits_max_abs_diff']:9.2e} {row['heads_max_abs_diff_points']:9.2e} "
              f"{row['attention_max_abs_diff_points']:9.2e} {row['mlp_max_abs_diff_points']:9.2e} "
              f"{a32['spearman']:8.4f} {a64['spearman']:8.4f} {a32['topk_overlap']:9.2f} {r['seconds']:6.1f}s",
              flush=True)  # fmt: skip
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vivit-frames", type=int, default=32, help="ViViT-B input frames (32: the published 3137 tokens)")
    p.add_argument("--models", default="shipped,vivit-b", help="which of shipped, vivit-b")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    from vivit_lens.placement import parse_device

    device = parse_device(a.device)
    out = {"device": str(device), "torch": torch.__version__, "models": {}}
    for which in a.models.split(","):
        name, model, clean, corrupt = shipped_pair() if which == "shipped" else vivit_b_pair(a.vivit_frames)
        runs = {}
        for dt in DTYPES:  # a table after each dtype from float32 on, and the JSON so far: partial runs keep their rows
            runs[dt] = measure(model, clean, corrupt, dt, device, a.batch_size)
            if torch.float32 in runs:
                out["models"][name] = compare(name, runs)
                if a.json:
                    from vivit_lens.atomic import write_text

                    write_text(a.json, json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
