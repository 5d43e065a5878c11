"""Path patching and attribution patching speed on the full ViViT-B architecture, side by side.

    python benchmarks/bench_paths.py                   # full size, [1, 32, 3, 224, 224], ~3-4 minutes on 2 cores
    python benchmarks/bench_paths.py --senders 4       # time 4 senders of the naive loop (then extrapolated)
    python benchmarks/bench_paths.py --small           # a quick look on a small config

(1) Attribution patching of all 144 heads x all 3137 positions (one forward of each run, one backward)
    vs one plain forward. (2) The path-patching sweep of all 144 sender heads into the final [CLS]
    residual vs the two/three-pass method run one sender at a time: pass 1 (both caches) once, then per
    sender a full forward with every other head and MLP frozen at its corrupt value (pass 2) and the
    classifier on the resulting final residual (pass 3). The naive loop is timed on `--senders` heads
    and extrapolated to 144, labelled as such. Also reports how well attribution agrees with the exact
    sweep (random weights: a sanity number, not a finding). Random weights: speed does not depend on values.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch

FULL = {"num_labels": 400}
SMALL = dict(image_size=64, num_frames=8, tubelet_size=[2, 16, 16], hidden_size=192, num_hidden_layers=4,
             num_attention_heads=3, intermediate_size=768, num_labels=10)  # fmt: skip


def build(config: dict):
    from transformers import VivitConfig, VivitForVideoClassification

    from vivit_lens import HookedViViT

    torch.manual_seed(0)
    hf = VivitForVideoClassification(VivitConfig(**config)).eval()
    with torch.no_grad():
        hf.vivit.embeddings.cls_token.normal_(std=0.02)
        hf.vivit.embeddings.position_embeddings.normal_(std=0.02)
    model = HookedViViT.from_hf_model(hf)
    del hf
    c = model.cfg
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(1, c.num_frames, 3, *c.image_size, generator=g) * 4 - 3
    corrupt = clean.clone()  # a minimal pair: the later half of the clip differs inside one box
    h, w = c.image_size
    corrupt[:, c.num_frames // 2 :, :, h // 4 : h // 2, w // 4 : w // 2] = (
        torch.rand(1, c.num_frames - c.num_frames // 2, 3, h // 2 - h // 4, w // 2 - w // 4, generator=g) * 4 - 3
    )
    return model, clean, corrupt


CPU: list[float] = []  # process CPU seconds (all threads) of the last timed() call


def timed(fn):
    """Wall seconds and result; the process CPU time lands in CPU[-1]. On a shared machine, other
    processes stretch wall time but hardly CPU time: the CPU ratios are the steadier comparison."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    CPU.append(time.process_time() - c)
    return time.perf_counter() - t, out


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def naive_sender(model, corrupt, ref_cache, src_cache, layer: int, head: int, metric) -> float:
    """Pass 2 + pass 3 for one sender head, plainly: a full forward of the corrupt clip with every head's z
    and every MLP output frozen at the corrupt run's value except this head's (clean), then the classifier
    on the final residual with [CLS] taken from that run."""
    L = model.cfg.n_layers

    def freeze_z(z, hook):
        frozen = ref_cache[hook.name].clone()
        if hook.name == f"blocks.{layer}.attn.hook_z":
            frozen[:, :, head] = src_cache[hook.name][:, :, head]
        return frozen

    hooks = [(f"blocks.{l}.attn.hook_z", freeze_z) for l in range(L)]
    hooks += [(f"blocks.{l}.hook_mlp_out", lambda t, hook: ref_cache[hook.name]) for l in range(L)]
    with torch.no_grad():
        final = model.run_with_hooks(corrupt, fwd_hooks=hooks, return_type="resid")  # pass 2
        resid = ref_cache[f"blocks.{L - 1}.hook_resid_post"].clone()
        resid[:, 0] = final[:, 0]
        patched = model(resid, start_at_layer=L)  # pass 3
        base = model(ref_cache[f"blocks.{L - 1}.hook_resid_post"], start_at_layer=L)
    return (metric(patched) - metric(base)).mean().item()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--senders", type=int, default=2, help="heads timed in the naive one-at-a-time loop (0: skip)")
    ap.add_argument("--forwards", type=int, default=2, help="plain forwards timed (the minimum is the reference)")
    ap.add_argument("--attribution-reps", type=int, default=3, help="attribution runs timed (the minimum is reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--small", action="store_true", help="a small config instead of ViViT-B")
    ap.add_argument("--json", help="also write the results to this file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from vivit_lens.attribution import agreement, attribution_patch
    from vivit_lens.metrics import Logit
    from vivit_lens.paths import FinalResid, Head, PathPatcher

    model, clean, corrupt = build(SMALL if args.small else FULL)
    cfg = model.cfg
    n_heads = cfg.n_layers * cfg.n_heads
    with torch.no_grad():
        label = int(model(clean).argmax(-1))  # also a warm-up forward
    metric = Logit(label)
    res: dict = {"config": "small" if args.small else "ViViT-B (VivitConfig(num_labels=400))",
                 "input": list(clean.shape), "threads": args.threads, "heads": n_heads}  # fmt: skip
    print(f"{res['config']}, input {tuple(clean.shape)}, {cfg.n_pos} tokens, {n_heads} heads, {args.threads} threads")

    # (1) plain forward vs attribution patching ----------------------------------------------------
    forwards, forwards_cpu = [], []

    def forward():
        with torch.no_grad():
            forwards.append(timed(lambda: model(corrupt))[0])
        forwards_cpu.append(CPU[-1])

    for _ in range(max(1, args.forwards)):
        forward()
    attrs, attrs_cpu = [], []
    for _ in range(args.attribution_reps):  # interleaved with the forwards: machine load drifts hit both alike
        t_attr, attr = timed(lambda: attribution_patch(model, clean, corrupt, metric))
        c_attr = CPU[-1]
        t_maps, _ = timed(lambda: (attr.head_out_by_pos, attr.head_out))
        attrs.append(t_attr + t_maps)
        attrs_cpu.append(c_attr + CPU[-1])
        forward()
    fwd, fwd_cpu = min(forwards), min(forwards_cpu)
    t_attr, c_attr = min(attrs), min(attrs_cpu)
    res.update(forward_s=forwards, forward_cpu_s=forwards_cpu, attribution_s=attrs, attribution_cpu_s=attrs_cpu,
               attribution_ratio=t_attr / fwd, attribution_ratio_cpu=c_attr / fwd_cpu)  # fmt: skip
    print(f"\n(1) attribution patching, {n_heads} heads x {cfg.n_pos} positions (+ q/k/v, attn/mlp out, resid)")
    print(f"    one plain forward, min of {len(forwards)}:       wall {fwd:7.2f} s   cpu {fwd_cpu:7.2f} s"
          f"   (all: {', '.join(f'{t:.2f}' for t in forwards)} s wall)")
    print(f"    attribution patching (2 fwd + 1 bwd), min of {len(attrs)}: wall {t_attr:7.2f} s   cpu {c_attr:7.2f} s"
          f"   (all: {', '.join(f'{t:.2f}' for t in attrs)} s wall; the first pays for fresh memory pages)")
    print(f"    ratio to one forward (target <= 4x):  wall {t_attr / fwd:5.2f}x     cpu {c_attr / fwd_cpu:5.2f}x")

    # (2) path-patching sweep vs the naive loop ----------------------------------------------------
    t_pass1, pp = timed(lambda: PathPatcher(model, clean, corrupt, metric, batch_size=16))
    c_pass1 = CPU[-1]
    t_sweep, sweep = timed(lambda: pp.senders_into(FinalResid(), senders="heads"))
    ours, ours_cpu = t_pass1 + t_sweep, c_pass1 + CPU[-1]
    res.update(sweep_pass1_s=t_pass1, sweep_s=t_sweep, sweep_total_s=ours, sweep_total_cpu_s=ours_cpu)
    print(f"\n(2) path patching: {n_heads} sender heads -> final [CLS] residual, everything else frozen")
    print(f"    sweep (pass 1 caches {t_pass1:.2f} s + batched sweep {t_sweep:.2f} s): wall {ours:7.2f} s"
          f"   cpu {ours_cpu:7.2f} s")
    if args.senders > 0:
        picks = torch.linspace(0, n_heads - 1, args.senders).round().long().tolist()
        heads = [(i // cfg.n_heads, i % cfg.n_heads) for i in picks]
        names = [f"blocks.{l}.{n}" for l in range(cfg.n_layers) for n in ("attn.hook_z", "hook_mlp_out")]
        names.append(f"blocks.{cfg.n_layers - 1}.hook_resid_post")
        with torch.no_grad():
            t_naive1, (_, ref_cache) = timed(lambda: model.run_with_cache(corrupt, names_filter=names))
            c_naive1 = CPU[-1]
            t_naive1_b, (_, src_cache) = timed(lambda: model.run_with_cache(clean, names_filter=names))
            t_naive1, c_naive1 = t_naive1 + t_naive1_b, c_naive1 + CPU[-1]
        per, per_cpu, diffs = [], [], []
        for l, h in heads:
            t, value = timed(lambda: naive_sender(model, corrupt, ref_cache, src_cache, l, h, metric))
            per.append(t)
            per_cpu.append(CPU[-1])
            diffs.append(abs(value - sweep.score(Head(l, h))))
        per_sender, per_sender_cpu = sum(per) / len(per), sum(per_cpu) / len(per_cpu)
        naive, naive_cpu = t_naive1 + n_heads * per_sender, c_naive1 + n_heads * per_sender_cpu
        res.update(naive_senders_timed=len(heads), naive_per_sender_s=per, naive_per_sender_cpu_s=per_cpu,
                   naive_pass1_s=t_naive1, naive_total_extrapolated_s=naive,
                   naive_total_extrapolated_cpu_s=naive_cpu, sweep_speedup_extrapolated=naive / ours,
                   sweep_speedup_extrapolated_cpu=naive_cpu / ours_cpu,
                   naive_vs_sweep_max_abs_diff=max(diffs))  # fmt: skip
        print(f"    naive, one sender at a time: pass 1 {t_naive1:.2f} s + {per_sender:.2f} s per sender "
              f"(mean of {len(heads)} timed: {', '.join(f'L{l}H{h}' for l, h in heads)})")
        print(f"    naive total for {n_heads} senders, EXTRAPOLATED from {len(heads)} timed: wall {naive:7.1f} s"
              f"   cpu {naive_cpu:7.1f} s")
        print(f"    speed-up of the sweep vs the extrapolated naive loop (target >= 3x): wall {naive / ours:.1f}x"
              f"   cpu {naive_cpu / ours_cpu:.1f}x")
        print(f"    naive vs sweep, max |difference| over the timed senders: {max(diffs):.2e}")

    # agreement of attribution with the exact sweep ------------------------------------------------
    approx = attr.senders_into(FinalResid(), senders="heads")
    agree = agreement(sweep, approx, k=10)
    res["agreement_heads_into_final"] = agree
    print(f"\n    attribution vs exact sweep (heads -> final [CLS], random weights): pearson {agree['pearson']:.4f}, "
          f"spearman {agree['spearman']:.4f}, top-10 overlap {agree['topk_overlap']:.2f}")
    res["peak_rss_gib"] = peak_rss_gib()
    print(f"\npeak RSS {res['peak_rss_gib']:.2f} GiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1)
    return res


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
