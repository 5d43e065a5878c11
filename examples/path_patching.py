"""Path patching: which heads feed the MLPs that compose the outcome signal, and what reaches [CLS] directly.

Activation patching (examples/outcome_circuit.py) says *which* blocks carry the signal; path patching says
*through which paths*: a sender's clean-minus-corrupt write is let through to one receiver only (a later MLP's
input, or the final [CLS] residual), every other component frozen at its corrupt value. Attribution
patching then estimates all of it from one backward pass, and we check it against the exact numbers.

    python examples/path_patching.py                          # the shipped tiny model and bowling pair
    python examples/path_patching.py MODEL CLEAN CORRUPT [CIRCUIT.png]
"""

import sys
import tempfile
from pathlib import Path

import torch

from vivit_lens import HookedViViT
from vivit_lens.analysis import load_pair
from vivit_lens.assets import example_inputs
from vivit_lens.attribution import agreement, attribution_patch
from vivit_lens.graph import Circuit
from vivit_lens.metrics import SignalRecovery, final_resid_hook
from vivit_lens.patching import get_act_patch_mlp_out
from vivit_lens.paths import MLP, FinalResid, Head, MLPInput, PathPatcher

model_name, clean_path, corrupt_path = example_inputs(sys.argv[1:])
torch.set_grad_enabled(False)
model = HookedViViT.from_pretrained(model_name)
cfg = model.cfg
pair = load_pair(model, clean_path, corrupt_path)  # loads, checks and preprocesses both clips
clean, corrupt = pair.clean, pair.corrupt
_, clean_cache = model.run_with_cache(clean)
_, corrupt_cache = model.run_with_cache(corrupt)
metric = SignalRecovery.from_caches(clean_cache, corrupt_cache, final_resid_hook(model), positions=[0])


def top(scores: torch.Tensor, k: int = 4) -> str:
    """The k largest |entries| of a [layer head] map, as 'L{l}H{h} value%'."""
    idx = scores.abs().flatten().topk(min(k, scores.numel())).indices.tolist()
    return ", ".join(f"L{i // cfg.n_heads}H{i % cfg.n_heads} {scores.flatten()[i]:+.1f}%" for i in idx)


# 1. The composers: the MLPs whose activation patching recovers most of the signal.
mlp = get_act_patch_mlp_out(model, corrupt, clean_cache, metric, positions="all", progress=False)
composers = mlp.argsort(descending=True)[:2].tolist()
print("MLP recovery per layer: " + " ".join(f"{v:.0f}%" for v in mlp.tolist()) + f"; composers: {composers}")

# 2. Exact path patching: one PathPatcher caches the pair once and answers every question in batched forwards.
pp = PathPatcher(model, clean, corrupt, metric)
direct = pp.senders_into(FinalResid())                # every head, MLP and the embedding -> final [CLS], directly
print(f"\ndirect paths to the final [CLS]: heads {top(direct.heads())}")
print("  MLPs: " + " ".join(f"{v:+.1f}%" for v in direct.mlps().tolist()))
into = {}
for layer in composers:
    into[layer] = pp.senders_into(MLPInput(layer), senders="heads").heads()   # [layer head]; later heads are 0
    print(f"heads -> MLP {layer} input: {top(into[layer][: layer + 1])}")

# 3. Attribution patching: the same questions from two forwards and one backward.
attr = attribution_patch(model, clean, corrupt, metric)
for name, exact, approx in [("direct heads -> [CLS]", direct.heads(), attr.senders_into(FinalResid()).heads())] + [
        (f"heads -> MLP {l}", into[l][: l + 1], attr.senders_into(MLPInput(l), senders="heads").heads()[: l + 1])
        for l in composers]:  # fmt: skip
    a = agreement(exact, approx, k=5)
    print(f"attribution vs exact, {name}: Pearson {a['pearson']:.3f}, Spearman {a['spearman']:.3f}, "
          f"top-5 overlap {a['topk_overlap']:.2f}")

# 4. The circuit: node colour = direct effect on [CLS]; edges = heads into the composers and components into [CLS].
edges = {(Head(l, h), MLPInput(m)): float(into[m][l, h]) for m in composers for l in range(m + 1)
         for h in range(cfg.n_heads)}  # fmt: skip
edges |= {(MLP(l), FinalResid()): float(v) for l, v in enumerate(direct.mlps().tolist())}
circuit = Circuit.from_scores(node_scores=direct, edge_scores=edges, top_k=12)
out = Path(sys.argv[4]) if len(sys.argv) > 4 else Path(tempfile.gettempdir()) / "vivit_lens_circuit.png"
circuit.draw(out)
print(f"\ncircuit with {len(circuit.nodes)} nodes and {len(circuit.edges)} edges drawn to {out}")
