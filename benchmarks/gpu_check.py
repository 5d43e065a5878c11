"""The GPU check: ViViT-B (random weights) against transformers' ViViT on the same device, then side by side.

    python benchmarks/gpu_check.py                    # on CUDA when there is a GPU (full size), else the CPU (small)
    python benchmarks/gpu_check.py --size full        # force the published size on any device (slow on a CPU)
    python benchmarks/gpu_check.py --json out.json    # keep every number

1. Equivalence, TF32 off: logits and every residual stream (HF `hidden_states[i]` = our
   `blocks.{i}.hook_resid_pre`, the last = `blocks.11.hook_resid_post`), max |difference|.
2. Side by side with HF (sdpa unless said), medians of `--reps` interleaved runs, peak memory per scenario (GPU:
   `max_memory_allocated`, reset before each; CPU: the process' peak RSS so far, which only grows):
   forward; `run_with_cache` of resid / attn_out / mlp_out / z vs HF `output_hidden_states`; every attention
   pattern cached vs HF eager `output_attentions`; the 144-head sweep (ours, batched) vs HF one forward per head
   (a pre-hook on `o_proj` that patches the head's slice); the path sweep (144 sender heads -> final [CLS]) and
   attribution patching, timed against one HF forward (HF has neither).
Sizes: `full` = [1, 32, 3, 224, 224] (3137 tokens), `small` = ViViT-B with 2 frames (197 tokens), `tiny` = a
4-layer toy (for a smoke run). On a machine without CUDA it says so and runs the CPU parts at `small`.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time

import torch

SIZES = {
    "full": dict(num_labels=400),
    "small": dict(num_labels=400, num_frames=2),
    "tiny": dict(num_labels=10, num_frames=4, image_size=64, tubelet_size=[2, 16, 16], hidden_size=96,
                 num_hidden_layers=4, num_attention_heads=4, intermediate_size=192),
}  # fmt: skip
CACHED = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out", "hook_z")
LABEL = 3


class Device:
    """Synchronising timers and peak memory for one device."""

    def __init__(self, device: torch.device):
        self.device, self.cuda = device, device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time(self, fn) -> float:
        self.sync()
        t = time.perf_counter()
        fn()
        self.sync()
        return time.perf_counter() - t

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_gib(self) -> float:
        if self.cuda:
            return torch.cuda.max_memory_allocated(self.device) / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(size: str, device: torch.device, attn: str = "sdpa"):
    from transformers import VivitConfig, VivitForVideoClassification

    from vivit_lens import HookedViViT

    torch.manual_seed(0)
    hf = VivitForVideoClassification(VivitConfig(**SIZES[size], attn_implementation=attn)).eval()
    with torch.no_grad():  # HF zero-initialises these; random values make the comparison meaningful
        hf.vivit.embeddings.cls_token.normal_()
        hf.vivit.embeddings.position_embeddings.normal_(0, 0.1)
    ours = HookedViViT.from_hf_model(hf).to(device)
    hf = hf.to(device)
    c = hf.config
    g = torch.Generator().manual_seed(0)
    clean = (torch.rand(1, c.num_frames, 3, c.image_size, c.image_size, generator=g) * 4 - 3).to(device)
    corrupt = clean.clone()
    h = c.image_size
    corrupt[:, c.num_frames // 2 :, :, h // 4 : h // 2, h // 4 : h // 2] = 0.5
    return hf, ours, clean, corrupt


def equivalence(hf, ours, x) -> dict:
    with torch.no_grad():
        ref = hf(x, output_hidden_states=True)
        names = [f"blocks.{i}.hook_resid_pre" for i in range(ours.cfg.n_layers)]
        names.append(f"blocks.{ours.cfg.n_layers - 1}.hook_resid_post")
        logits, cache = ours.run_with_cache(x, names_filter=names)
    resid = [(cache[n].double() - h.double()).abs().max().item() for n, h in zip(names, ref.hidden_states)]
    return {"logits_max_abs_diff": (logits.double() - ref.logits.double()).abs().max().item(),
            "logits_max_abs": ref.logits.abs().max().item(), "resid_max_abs_diff": resid,
            "resid_max_abs_diff_worst": max(resid)}  # fmt: skip


def _o_projs(hf) -> list[torch.nn.Module]:
    """Each layer's attention output projection (its input is the concatenated head outputs, z)."""
    found = [m for n, m in hf.named_modules() if n.endswith(("attention.o_proj", "attention.output.dense"))]
    assert len(found) == hf.config.num_hidden_layers, [n for n, _ in hf.named_modules()][:40]
    return found


def hf_head_sweep(hf, clean, corrupt) -> torch.Tensor:
    """One HF forward per head: the corrupt run with that head's z replaced by the clean run's."""
    c = hf.config
    d_head = c.hidden_size // c.num_attention_heads
    o_projs = _o_projs(hf)
    clean_z: dict[int, torch.Tensor] = {}
    hooks = [o.register_forward_pre_hook(lambda m, a, l=l: clean_z.__setitem__(l, a[0].detach()))
             for l, o in enumerate(o_projs)]  # fmt: skip
    with torch.no_grad():
        hf(clean)
    for h in hooks:
        h.remove()
    out = torch.zeros(c.num_hidden_layers, c.num_attention_heads, device=clean.device)
    for layer, o in enumerate(o_projs):
        for head in range(c.num_attention_heads):
            sl = slice(head * d_head, (head + 1) * d_head)

            def patch(m, args, sl=sl, layer=layer):
                z = args[0].clone()
                z[..., sl] = clean_z[layer][..., sl]
                return (z,)

            handle = o.register_forward_pre_hook(patch)
            with torch.no_grad():
                out[layer, head] = hf(corrupt).logits[0, LABEL]
            handle.remove()
    return out


def side_by_side(dev: Device, hf, hf_eager, ours, clean, corrupt, reps: int, skip_naive: bool) -> list[dict]:
    from vivit_lens.attribution import attribution_patch
    from vivit_lens.metrics import Logit
    from vivit_lens.patching import get_act_patch_attn_head_out_all_pos
    from vivit_lens.paths import FinalResid, PathPatcher

    def cache():
        return ours.run_with_cache(clean, names_filter=lambda n: n.endswith(CACHED))

    def patterns():
        return ours.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_pattern"), check_memory=False)

    def sweep():
        _, cc = ours.run_with_cache(clean, names_filter=lambda n: n.endswith("hook_z"))
        return get_act_patch_attn_head_out_all_pos(ours, corrupt, cc, Logit(LABEL), progress=False)

    def paths():
        return PathPatcher(ours, clean, corrupt, Logit(LABEL)).senders_into(FinalResid(), senders="heads").heads()

    def attribution():
        return attribution_patch(ours, clean, corrupt, Logit(LABEL)).head_out

    rows = [("forward", lambda: ours(clean), lambda: hf(clean).logits),
            ("run_with_cache resid/attn_out/mlp_out/z", cache, lambda: hf(clean, output_hidden_states=True)),
            ("all attention patterns cached", patterns, lambda: hf_eager(clean, output_attentions=True)),
            ("head sweep (every head, all positions)", sweep,
             None if skip_naive else (lambda: hf_head_sweep(hf, clean, corrupt))),
            ("path sweep (heads -> final [CLS])", paths, None),
            ("attribution patching", attribution, None)]  # fmt: skip
    out, values = [], {}
    with torch.no_grad():
        hf_forward = statistics.median(dev.time(lambda: hf(clean)) for _ in range(max(reps, 1)))
    for name, ours_fn, hf_fn in rows:
        t_ours, t_hf, peak_ours, peak_hf = [], [], 0.0, 0.0
        n = reps if name in ("forward", "run_with_cache resid/attn_out/mlp_out/z") else 1
        for _ in range(n):
            with torch.no_grad():
                if hf_fn is not None:
                    dev.reset_peak()
                    t_hf.append(dev.time(hf_fn))
                    peak_hf = max(peak_hf, dev.peak_gib())
                dev.reset_peak()
                grad = torch.enable_grad() if name == "attribution patching" else torch.no_grad()
                with grad:
                    res = {}
                    t_ours.append(dev.time(lambda: res.setdefault("v", ours_fn())))
                values[name] = res["v"]
                peak_ours = max(peak_ours, dev.peak_gib())
        o = statistics.median(t_ours)
        h = statistics.median(t_hf) if t_hf else hf_forward
        out.append({"scenario": name, "ours_s": o, "hf_s": statistics.median(t_hf) if t_hf else None,
                    "vs": "HF, same work" if t_hf else "one HF forward", "ratio": o / h, "peak_ours_gib": peak_ours,
                    "peak_hf_gib": peak_hf if t_hf else None})  # fmt: skip
        r = out[-1]
        print(f"{name:42s} ours {o:8.3f} s  {'HF ' + format(r['hf_s'], '8.3f') + ' s' if t_hf else 'vs HF forward':16s}"
              f" ratio {r['ratio']:6.2f}x  peak ours {peak_ours:6.2f} GiB"
              + (f"  HF {peak_hf:6.2f} GiB" if t_hf else ""), flush=True)  # fmt: skip
    if not skip_naive:
        naive = hf_head_sweep(hf, clean, corrupt)
        diff = (values["head sweep (every head, all positions)"].double() - naive.double()).abs().max().item()
        out.append({"scenario": "head sweep ours vs HF, max |difference|", "value": diff})
        print(f"head sweep, ours vs HF one forward per head: max |difference| {diff:.2e}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: full on CUDA, small elsewhere")
    p.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    p.add_argument("--reps", type=int, default=5, help="interleaved runs of the forward and cache scenarios")
    p.add_argument("--skip-naive", action="store_true", help="skip HF's one-forward-per-head sweep (the slow side)")
    p.add_argument("--json", default=None)
    a = p.parse_args()
    from vivit_lens.placement import parse_device

    cuda = torch.cuda.is_available()
    device = parse_device(a.device or ("cuda" if cuda else "cpu"))
    if device.type != "cuda":
        print("no GPU found (torch.cuda.is_available() is False): the CPU parts only, "
              f"at size {a.size or 'small'}; rerun on a machine with CUDA for the GPU figures")  # fmt: skip
    size = a.size or ("full" if device.type == "cuda" else "small")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # full float32 matmuls: equivalence means float32 here
        torch.backends.cudnn.allow_tf32 = False
        print(f"GPU: {torch.cuda.get_device_name(device)}; TF32 off")
    dev = Device(device)
    hf, ours, clean, corrupt = build(size, device)
    hf_eager, _, _, _ = build(size, device, attn="eager")
    eq = equivalence(hf, ours, clean)
    print(f"size {size}: input {tuple(clean.shape)}, {ours.cfg.n_pos} tokens, device {device}")
    print(f"equivalence vs transformers {__import__('transformers').__version__} (sdpa): logits max |diff| "
          f"{eq['logits_max_abs_diff']:.2e} (logits up to {eq['logits_max_abs']:.2f}), worst residual stream "
          f"{eq['resid_max_abs_diff_worst']:.2e} over {len(eq['resid_max_abs_diff'])} resids")  # fmt: skip
    rows = side_by_side(dev, hf, hf_eager, ours, clean, corrupt, a.reps, a.skip_naive)
    if a.json:
        from vivit_lens.atomic import write_text

        info = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                "size": size, "torch": torch.__version__, "tf32": False if device.type == "cuda" else None}  # fmt: skip
        write_text(a.json, json.dumps({**info, "equivalence": eq, "side_by_side": rows}, indent=1))


if __name__ == "__main__":
    main()
