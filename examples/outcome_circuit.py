"""The outcome circuit: the paper's causal experiments, step by step with the vivit_lens API. The paper: Sai
Chereddy, "Attention Gathers, MLPs Compose: A Causal Analysis of an Action-Outcome Circuit in VideoViT"
(arXiv:2603.11142, 2026).

1. Zero-ablate the outcome region (ball and pins after the decisive frame): the class logit barely moves
   (the paper's Table 1).
2. Define the signal: the clean - corrupt difference of the last block's [CLS] residual, and score a
   patched run as the % of it recovered.
3. Patch every attention block and every MLP block, clean -> corrupt (the paper's Table 2: "attention
   gathers, MLPs compose"), then every head.

    python examples/outcome_circuit.py                         # the shipped tiny model and bowling pair
    python examples/outcome_circuit.py MODEL CLEAN CORRUPT
"""

import sys

import torch

from vivit_lens import HookedViViT, paper
from vivit_lens.ablation import Ablation, ablate, mask_pixels, topk_table
from vivit_lens.analysis import load_pair, region_from_difference
from vivit_lens.assets import example_inputs
from vivit_lens.metrics import SignalRecovery, final_resid_hook
from vivit_lens.patching import (
    get_act_patch_attn_head_out_all_pos,
    get_act_patch_attn_out,
    get_act_patch_mlp_out,
)  # fmt: skip

model_name, clean_path, corrupt_path = example_inputs(sys.argv[1:])
torch.set_grad_enabled(False)
model = HookedViViT.from_pretrained(model_name)
cfg = model.cfg
pair = load_pair(model, clean_path, corrupt_path)  # loads, checks and preprocesses both clips
clean, corrupt = pair.clean, pair.corrupt
logits_clean, clean_cache = model.run_with_cache(clean)
_, corrupt_cache = model.run_with_cache(corrupt)
label = int(logits_clean[0].argmax())

# 1. The region: load_pair mapped the outcome box and decisive frame of a synthetic pair's spec.json onto the
#    model input; without one, take the tokens whose embeddings differ most between the clips.
region = pair.region or region_from_difference(model, clean, corrupt)
print(f"outcome region: {len(region.positions)} of {cfg.n_tubelets} tokens ({region.source})")

ablated = ablate(model, clean, Ablation.zero("blocks.0.hook_resid_pre", positions=list(region.positions)))
table = topk_table(logits_clean, ablated, model.labels, k=min(6, cfg.n_classes))
print(f"\n{paper.cite('Table 1')}: the region's tokens zeroed at the input of block 0\n{table}")
if pair.region is not None:  # a pixel box: mask it in the frames themselves
    masked = model(mask_pixels(clean, frames=range(*region.frames), box=region.box, value=0.0))
    print(f"\nthe region's pixels set to 0 instead: '{model.labels[label]}' logit "
          f"{logits_clean[0, label]:.4f} -> {masked[0, label]:.4f}")

# 2. The signal and its metric: 0% = the corrupt run, 100% = the clean run.
hook = final_resid_hook(model)                                   # blocks.{L-1}.hook_resid_post
metric = SignalRecovery.from_caches(clean_cache, corrupt_cache, hook, positions=[0])

# 3. Attention vs MLP, one block at a time (batched, resumed at the patched layer).
attn = get_act_patch_attn_out(model, corrupt, clean_cache, metric, positions="all", progress=False)
mlp = get_act_patch_mlp_out(model, corrupt, clean_cache, metric, positions="all", progress=False)
print(f"\n{paper.cite('Table 2')}: % of the {hook} [CLS] signal recovered by patching one block clean -> corrupt")
print("  layer  attention      MLP")
for layer in range(cfg.n_layers):
    print(f"  {layer:5d}  {attn[layer]:8.1f}%  {mlp[layer]:7.1f}%")

heads = get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric, progress=False)  # [layer head]
best = heads.abs().flatten().topk(min(5, heads.numel())).indices.tolist()
print("\nsingle heads with the largest recovery: " + ", ".join(
    f"L{i // cfg.n_heads}H{i % cfg.n_heads} {heads.flatten()[i]:.1f}%" for i in best))
# In the last layer nothing follows the patch before the signal is read, so single heads add up to the block:
print(f"last layer: its heads one at a time sum to {heads[-1].sum():.1f}%, its whole block gives {attn[-1]:.1f}%")
