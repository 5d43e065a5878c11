"""Per-head activation patching on the full ViViT-B: vivit_lens' engine vs the naive way, side by side.

    python benchmarks/bench_patching.py                      # quick look: layers 3 and 8, all 12 heads
    python benchmarks/bench_patching.py --layers all --no-second-ours   # the whole 144-head sweep (~32 min)
    python benchmarks/bench_patching.py --layers 0,11 --heads 0,5 --metric signal

Naive = what TransformerLens' patching does: one full forward from pixels per patched head, with
a `run_with_hooks` hook that overwrites that head's `hook_z` with the clean run's. Two naive
baselines run: "naive" on our model as it is (fused attention kernel), and "naive-TL", the same
with the attention pattern materialised in every layer, as TransformerLens' attention always
computes it (its `hook_pattern` is always there): the cost a TransformerLens user pays today. Ours =
`get_act_patch_attn_head_out_all_pos` (`run_patches` for a head subset): the heads of a layer in
one batched forward that resumes after that layer's attention (from the cached residual and z),
and the last block computed only at [CLS]. Both get the same clean cache (computed once, untimed:
TransformerLens takes it as an input too); ours pays for its own cache run of the corrupt input.
Random weights (speed does not depend on values); order: ours, naive, ours again, so that machine
load hits both; CPU time is printed too, as wall time on a shared machine swings with others' load.

What to expect: a head patch at layer l changes nothing before layer l's attention output, and the
metric reads [CLS] only, so a patched run needs layer l's o_proj and MLP, blocks l+1 .. 10 in full,
and block 11's keys/values plus its [CLS] row: about 10.5 - l of the 12 blocks, 5 on average over
all 144 heads, plus one cache run. No exact method computes less; expect about 2.3x on the full
sweep (layers 3,8 have the same mean resume point). Batching changes little here: 3137 tokens
already fill the matmuls of one clip.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vivit_lens import HookedViViT
from vivit_lens.metrics import Logit, SignalRecovery, final_resid_hook
from vivit_lens.patching import Patch, get_act_patch_attn_head_out_all_pos, run_patches


def build(seed: int = 0) -> HookedViViT:
    from transformers import VivitConfig, VivitForVideoClassification

    torch.manual_seed(seed)
    hf = VivitForVideoClassification(VivitConfig(num_labels=400)).eval()
    with torch.no_grad():  # HF zero-inits these; random values make the run a real one
        hf.vivit.embeddings.cls_token.normal_()
        hf.vivit.embeddings.position_embeddings.normal_()
    return HookedViViT.from_hf_model(hf)


def naive_sweep(model, corrupt, clean_cache, metric, pairs, eager: bool = False) -> torch.Tensor:
    """One full forward per (layer, head), as TransformerLens' generic_activation_patch runs it
    (`eager`: with every attention pattern materialised, as TransformerLens' attention computes it)."""
    pattern_hooks = [(f"blocks.{l}.attn.hook_pattern", lambda t, hook: None) for l in range(model.cfg.n_layers)]
    out = torch.empty(len(pairs))
    for i, (layer, head) in enumerate(pairs):
        name = f"blocks.{layer}.attn.hook_z"

        def patch(z, hook, head=head, clean=clean_cache[name]):
            z = z.clone()
            z[:, :, head] = clean[:, :, head]
            return z

        store = {}
        hooks = [(name, patch)] + (pattern_hooks if eager else [])
        if metric.reads is not None:
            hooks.append((metric.reads, lambda t, hook, store=store: store.__setitem__("act", t)))
        with torch.no_grad():
            logits = model.run_with_hooks(corrupt, fwd_hooks=hooks)
        out[i] = metric(store.get("act", logits))[0]
    return out


def ours(model, corrupt, clean_cache, metric, layers, heads, pairs, batch_size) -> torch.Tensor:
    if heads == list(range(model.cfg.n_heads)):
        res = get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric, layers=layers,
                                                  batch_size=batch_size, progress=False)  # fmt: skip
        return res.reshape(-1)
    patches = [Patch.at(f"blocks.{l}.attn.hook_z", heads=h) for l, h in pairs]
    return run_patches(model, corrupt, clean_cache, patches, metric, batch_size=batch_size, progress=False)


def parse_list(text: str, n: int) -> list[int]:
    return list(range(n)) if text == "all" else [int(t) for t in text.split(",")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="3,8", help="comma-separated layers, or 'all' (default 3,8: mean resume point"
                    " 5.5, as in the full sweep)")
    ap.add_argument("--heads", default="all", help="comma-separated heads, or 'all' (default)")
    ap.add_argument("--metric", choices=("logit", "signal"), default="logit",
                    help="logit: one class logit (checked within 1e-5); signal: the paper's %% signal recovery")
    ap.add_argument("--batch-size", type=int, default=12)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-second-ours", action="store_true", help="skip the second timing of ours")
    ap.add_argument("--no-tl", action="store_true", help="skip the naive-TL baseline (materialised patterns)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    model = build()
    cfg = model.cfg
    layers, heads = parse_list(args.layers, cfg.n_layers), parse_list(args.heads, cfg.n_heads)
    pairs = [(l, h) for l in layers for h in heads]
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(1, cfg.num_frames, 3, *cfg.image_size, generator=g) * 4 - 3
    corrupt = clean.clone()
    corrupt[:, 16:, :, 64:160, 64:160] = torch.rand(1, 16, 3, 96, 96, generator=g) * 4 - 3  # a local change
    hook = final_resid_hook(model)
    with torch.no_grad():
        clean_logits, clean_cache = model.run_with_cache(
            clean, names_filter=lambda n: n.endswith("attn.hook_z") or n == hook)
        _, corrupt_cache = model.run_with_cache(corrupt, names_filter=hook)
    label = int(clean_logits[0].argmax())
    metric = Logit(label) if args.metric == "logit" else SignalRecovery.from_caches(clean_cache, corrupt_cache, hook)
    print(f"full ViViT-B ({cfg.n_layers} layers x {cfg.n_heads} heads, {cfg.n_pos} tokens), input "
          f"[1, {cfg.num_frames}, 3, {cfg.image_size[0]}, {cfg.image_size[1]}], {args.threads} threads; "
          f"setup {time.perf_counter() - t0:.1f} s")
    print(f"patched: layers {layers} x heads {heads} = {len(pairs)} runs; metric {type(metric).__name__}"
          f"{f'({label})' if args.metric == 'logit' else ' (final layer, CLS)'}; batch_size {args.batch_size}")

    wall = {"ours": [], "naive": [], "naive-TL": []}
    cpu = {"ours": [], "naive": [], "naive-TL": []}

    def timed(kind, fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        wall[kind].append(time.perf_counter() - w)
        cpu[kind].append(time.process_time() - c)
        print(f"  {kind:8}: wall {wall[kind][-1]:7.1f} s, cpu {cpu[kind][-1]:7.1f} s", flush=True)
        return out

    fast = timed("ours", lambda: ours(model, corrupt, clean_cache, metric, layers, heads, pairs, args.batch_size))
    slow = timed("naive", lambda: naive_sweep(model, corrupt, clean_cache, metric, pairs))
    slow_tl = None if args.no_tl else timed(
        "naive-TL", lambda: naive_sweep(model, corrupt, clean_cache, metric, pairs, eager=True))
    if not args.no_second_ours:
        again = timed("ours", lambda: ours(model, corrupt, clean_cache, metric, layers, heads, pairs, args.batch_size))
        assert torch.equal(again, fast), "ours is not deterministic"

    diff = (fast.double() - slow.double()).abs().max().item()
    if slow_tl is not None:
        diff = max(diff, (fast.double() - slow_tl.double()).abs().max().item())
    scale = slow.abs().max().item()
    print(f"max |ours - naive| = {diff:.2e} (values up to {scale:.3g}; {'within' if diff <= 1e-5 else 'NOT within'} "
          f"1e-5{'' if args.metric == 'logit' else '; a percentage of a small residual difference: float32 rounding'})")
    w_o, w_n = statistics.mean(wall["ours"]), wall["naive"][0]
    c_o, c_n = statistics.mean(cpu["ours"]), cpu["naive"][0]
    print(f"patched: layers {layers} x heads {heads} ({len(pairs)} runs)")
    print(f"wall time: ours {w_o:.1f} s, naive {w_n:.1f} s ({w_n / len(pairs):.2f} s per forward): "
          f"speed-up {w_n / w_o:.2f}x")
    print(f"cpu time : ours {c_o:.1f} s, naive {c_n:.1f} s: speed-up {c_n / c_o:.2f}x "
          f"(steadier than wall time on a shared machine)")
    if slow_tl is not None:
        w_t, c_t = wall["naive-TL"][0], cpu["naive-TL"][0]
        print(f"vs naive-TL (patterns materialised): wall {w_t:.1f} s ({w_t / len(pairs):.2f} s per forward), "
              f"speed-up {w_t / w_o:.2f}x; cpu {c_t:.1f} s, speed-up {c_t / c_o:.2f}x")
    print("values (ours):", [round(v, 5) for v in fast.tolist()[:12]], "..." if len(pairs) > 12 else "")


if __name__ == "__main__":
    main()
