"""Quick start: the first look of the paper at a minimal pair, with the vivit_lens API.

Load a ViViT and a clean (strike) / corrupt (gutter ball) pair of videos, run both with a cache, and read
the predictions, the per-layer activation delta ("amplification cascade"), direct logit attribution and
the [CLS] attention of the heads that matter most.

    python examples/quickstart.py                         # the shipped tiny model and bowling pair
    python examples/quickstart.py MODEL CLEAN CORRUPT     # any ViViT checkpoint folder (or hub id) and pair
"""

import sys

import torch

from vivit_lens import HookedViViT, video
from vivit_lens.assets import example_inputs
from vivit_lens.measure import cls_attention, delta_norms

model_name, clean_path, corrupt_path = example_inputs(sys.argv[1:])
torch.set_grad_enabled(False)

# 1. The model: a hookable ViViT, loaded from an HF-layout folder or the hub.
model = HookedViViT.from_pretrained(model_name)
cfg = model.cfg
print(f"{model_name}: {cfg.n_layers} layers, {cfg.n_heads} heads, d_model {cfg.d_model}, "
      f"{cfg.num_frames} frames -> token grid {cfg.grid_shape} + [CLS] = {cfg.n_pos} tokens")

# 2. The pair: sample the model's frame count uniformly, preprocess as VivitImageProcessor does.
clean = video.preprocess(video.load(clean_path, num_frames=cfg.num_frames), model.processor)
corrupt = video.preprocess(video.load(corrupt_path, num_frames=cfg.num_frames), model.processor)

# 3. Both runs, every activation cached (TransformerLens hook names).
logits_clean, cache_clean = model.run_with_cache(clean)
logits_corrupt, cache_corrupt = model.run_with_cache(corrupt)
for name, logits in (("clean", logits_clean), ("corrupt", logits_corrupt)):
    top = logits[0].topk(min(5, cfg.n_classes))
    print(f"{name:>8} top-5: " + ", ".join(f"{model.labels[i]} ({v:.3f})" for v, i in zip(top.values.tolist(),
                                                                                         top.indices.tolist())))
label = int(logits_clean[0].argmax())  # both clips get this class; the outcome is not in the output
print(f"class analysed: {model.labels[label]!r}")

# 4. The amplification cascade: L2 norm of the clean - corrupt activation delta per layer (Figure 1 of Chereddy 2026, arXiv:2603.11142).
norms = delta_norms(cache_clean, cache_corrupt, hooks=["resid_post"])
print("\n||resid_clean - resid_corrupt|| after each block (mean over tokens / at [CLS]):")
for layer, (cls_norm, mean_norm) in enumerate(norms.values[0].tolist()):
    print(f"  layer {layer:2d}: {mean_norm:8.4f} / {cls_norm:8.4f}")

# 5. Direct logit attribution: what each component and each source token adds to the class logit.
attrs, labels = cache_clean.dla_components(label, model=model)
print("\nDLA of the clean clip (sums to the logit "
      f"{logits_clean[0, label]:.4f}: {attrs.sum().item():.4f}):")
print("  " + ", ".join(f"{n} {v:+.3f}" for n, v in zip(labels, attrs[:, 0].tolist())))
per_token = cache_clean.dla_tokens(label, model=model)[:, :, 0].sum((0, 1))      # [pos], via the heads at [CLS]
per_frame = model.grid.per_frame(per_token)                                       # [tubelet time]
print("  through the heads, per tubelet time: " + " ".join(f"{v:+.3f}" for v in per_frame.tolist()))

# 6. [CLS] attention of the heads with the largest direct effect, mapped to (frame, row, col).
dla_heads = cache_clean.dla_heads(label, model=model)[..., 0]                    # [layer head]
attention = cls_attention(cache_clean)                                            # [layer head t h w]
print("\nheads with the largest |DLA| and where their [CLS] query looks most:")
for flat in dla_heads.abs().flatten().topk(3).indices.tolist():
    layer, head = divmod(flat, cfg.n_heads)
    m = attention.values[layer, head]
    t, row, col = (int(i) for i in torch.unravel_index(m.argmax(), m.shape))
    print(f"  L{layer}H{head}: DLA {dla_heads[layer, head]:+.3f}; peak {m.max():.3f} at {attention.labels[2][t]}, "
          f"row {row}, col {col}")
