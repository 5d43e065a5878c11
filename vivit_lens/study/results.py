"""What a results.json holds besides the measurements: the definitions of its terms, its provenance
(model, versions, the checkpoint's recorded findings), and the conversion of tensors to plain JSON.

    res["definitions"] = definitions("analysis")      # or definitions("study", n_boot=2000, seed=0)
    res["meta"] = provenance(model, "path/to/checkpoint")
    json.dumps(jsonable(res))                          # tensors as lists, NaN/inf as null
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

RECOVERY_FORMULA = (
    "recovery(%) = 100 * <r_patched - r_corrupt, r_clean - r_corrupt> / ||r_clean - r_corrupt||^2, "
    "r = residual stream at {hook} (positions {positions}), flattened; the corrupt run with one "
    "component's output replaced by its clean value. 0% = corrupt run, 100% = clean run."
)
DEFINITIONS = {
    "clean / corrupt": "clean = the success clip (e.g. strike), corrupt = the failure clip (e.g. gutter ball); "
                       "patching runs the corrupt clip and patches in clean activations (denoising).",
    "delta_cascade": "for each layer l and hook, the L2 norm of act_clean - act_corrupt over d_model: at the [CLS] "
                     "token ('cls') and averaged over all tokens ('token_mean', Figure 1 of the paper).",
    "dla": "direct logit attribution: each component's write to the final [CLS] residual, centred and divided by "
           "the final LayerNorm scale of the run (frozen), dotted with ln_final.w * W_U[:, class]; the components "
           "plus 'bias' sum to the logit exactly.",
    "dla_tokens": "the part of every head's [CLS] output read from each source token "
                  "(pattern[h, CLS, s] * v[s, h] @ W_O[h]), attributed to the class logit as above and summed over "
                  "layers and heads; map[t][row][col] is the tubelet at time t, token row and column.",
    "cls_attention": "softmax attention weight of the [CLS] query on each tubelet token, per layer and head.",
    "region": "the outcome region: a pixel box x0,y0,x1,y1 (model-input pixels, x1 and y1 exclusive) in input "
              "frames [a, b), and the tubelet tokens that touch it.",
    "region_mass": "sum of a head's readout attention ([CLS]'s row; a mean-pooling model: the mean row) on the "
                   "region's tokens; region_mass_ratio divides it by the "
                   "share uniform attention would put there.",
    "ablation_pixels": "the region's pixels set to 0 in the model's normalised input space (what 'zeroing' "
                       "pixel_values does; grey for the default preprocessing), then a forward pass.",
    "ablation_tokens": "the region's tokens set to 0 at blocks.0.hook_resid_pre (embedding + position "
                       "embedding), then a forward pass.",
    "recovery_norm": "100 * ||r_patched - r_corrupt|| / ||r_clean - r_corrupt||: direction-blind size of the change.",
    "path_effect": "path patching (frozen): the sender's clean-minus-corrupt write reaches only the receiver, along the "
                   "direct residual path; every other component keeps its corrupt value. Same % units as recovery. "
                   "A head in layer L writes after MLP l < L reads: those paths do not exist (unreachable, not 0).",
    "attribution": "attribution patching: (a_clean - a_corrupt) . d(metric)/da in the corrupt run, the first-order "
                   "estimate of each patching effect; agreement = Pearson / Spearman correlation with the exact "
                   "values and the overlap of the k largest |values|.",
    "bootstrap_ci": "percentile bootstrap over pairs of the mean: resamples of the pairs with replacement (numpy); "
                    "[2.5%, 97.5%] quantiles of the resampled means.",
    "probe": "per-layer logistic-regression probe on the [CLS] residual (blocks.l.hook_resid_post) of clean and "
             "corrupt clips, label = outcome (1 = success, 0 = failure); test = accuracy of grouped k-fold "
             "out-of-fold predictions (a pair's two clips always in one fold), 95% CI by bootstrap over pairs; "
             "control = the same probe and folds with the labels permuted within each pair.",
    "transfer": "a probe trained on every pair of one domain (e.g. bowling outcomes) and tested on every pair of "
                "another (golf outcomes), each domain's features standardised with its own statistics: above "
                "chance means a shared 'success' direction.",
    "hidden": "the outcome is hidden from the label when both clips of a pair get the same top-1 class "
              "(same_top1_fraction) and that class is the action (action_accuracy, over both clips).",
}
# The terms each report uses (a report lists only the definitions that apply to it).
ANALYSIS_TERMS = ("clean / corrupt", "delta_cascade", "dla", "dla_tokens", "cls_attention", "region", "region_mass",
                  "ablation_pixels", "ablation_tokens", "recovery_norm", "path_effect", "attribution")
STUDY_TERMS = ("clean / corrupt", "delta_cascade", "region", "region_mass", "ablation_pixels", "ablation_tokens",
               "bootstrap_ci", "probe", "transfer", "hidden")


def definitions(kind: str, *, n_boot: int | None = None, seed: int | None = None) -> dict[str, str]:
    """The definitions an `"analysis"` or a `"study"` report uses; a study's bootstrap names its resamples and seed."""
    terms = {"analysis": ANALYSIS_TERMS, "study": STUDY_TERMS}[kind]
    out = {k: DEFINITIONS[k] for k in terms}
    if kind == "study" and n_boot is not None:
        out["bootstrap_ci"] = (f"percentile bootstrap over pairs of the mean: {n_boot} resamples of the pairs with "
                               f"replacement (numpy, seed {seed}); [2.5%, 97.5%] quantiles of the resampled means.")
    return out


def _list(t: Tensor | np.ndarray | float) -> Any:
    """Plain Python floats (nested lists) from a tensor or array; NaN/inf become None."""
    if isinstance(t, Tensor):
        t = t.detach().double().cpu().numpy()
    arr = np.asarray(t, dtype=float)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else None
    return [_list(a) for a in arr]


def jsonable(obj: Any) -> Any:
    """A copy of `obj` that `json.dumps` writes as standard JSON: tensors as lists, non-finite floats as null."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (Tensor, np.ndarray)):
        return _list(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


# Provenance -------------------------------------------------------------------------------------
def model_findings(model_name: str | Path | None) -> dict | None:
    """What a local checkpoint's `training.json` records of the model's outcome knowledge (`outcome_world`,
    written by `benchmarks/outcome_world.py --record`), or None."""
    if not model_name:
        return None
    path = Path(model_name) / "training.json"
    try:
        return json.loads(path.read_text()).get("outcome_world") if path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


HIDDEN_AT = 0.95  # the share of pairs with the same top-1 on both clips from which an outcome counts as hidden
PRESENT_AT = 0.7  # probe accuracy from which an outcome counts as present (with its CI above chance)


def _hidden_word(h: Mapping) -> str:
    return "hidden from" if h["same_top1_fraction"] >= HIDDEN_AT else "not hidden from"


def _present_word(b: Mapping) -> str:
    """How a probe's held-out accuracy reads: absent (CI reaches chance), weakly present, or present."""
    if b["test_lo"] <= 0.5:
        return "not found in"
    return "present in" if b["test"] >= PRESENT_AT else "only weakly present in"


def findings_lines(f: Mapping, readout: str = "[CLS]") -> list[str]:
    """Plain-text sentences for a `model_findings` record (the measured hidden / present / transfer / causal);
    `readout` names where the model reads (`summary.readout_word`)."""
    lines = []
    for dom, d in f.get("domains", {}).items():
        h, p, c = d["hidden"], d["present"], d["causal"]
        b = p["best"]
        lines.append(f"{dom}: the outcome is {_hidden_word(h)} the label (same top-1 on both clips of "
                     f"{h['same_top1_fraction']:.1%} of {h['n_pairs']} pairs, 95% CI [{h['same_top1_ci'][0]:.1%}, "
                     f"{h['same_top1_ci'][1]:.1%}]; top-1 = {h.get('action', '?')} on {h.get('action_accuracy', float('nan')):.1%}) "
                     f"and {_present_word(b)} the {readout}: a linear probe reads it at {b['test']:.2f} [{b['test_lo']:.2f}, "
                     f"{b['test_hi']:.2f}] held-out accuracy at layer {p['best_layer']} (grouped {p['k']}-fold over "
                     f"{p['n_pairs']} pairs; shuffled-label control {b['control']:.2f}).")
        att = [v[0] for v in c["attention_recovery_by_layer"]]
        mlp = [v[0] for v in c["mlp_recovery_by_layer"]]
        la, lm = int(np.argmax(att)), int(np.argmax(mlp))
        sh, rg = c["strongest_head"], c["head_most_on_region"]
        lines.append(f"{dom}, causal ({c['n_pairs']} pairs): patching the layer-{la} attention output recovers "
                     f"{att[la]:.0f}% [{c['attention_recovery_by_layer'][la][1]:.0f}, "
                     f"{c['attention_recovery_by_layer'][la][2]:.0f}] of the clean - corrupt signal, the layer-{lm} MLP "
                     f"{mlp[lm]:.0f}% [{c['mlp_recovery_by_layer'][lm][1]:.0f}, {c['mlp_recovery_by_layer'][lm][2]:.0f}]; "
                     f"strongest head L{sh['layer']}H{sh['head']} {sh['recovery'][0]:.0f}% "
                     f"[{sh['recovery'][1]:.0f}, {sh['recovery'][2]:.0f}]; L{rg['layer']}H{rg['head']} puts "
                     f"{rg['mass_over_uniform'][0]:.1f}x the uniform share of its {readout} attention on the outcome region.")
    for name, t in f.get("transfer", {}).items():
        lines.append(f"transfer {name}: a probe trained on one domain's outcomes scores {t['test']:.2f} "
                     f"[{t['lo']:.2f}, {t['hi']:.2f}] on the other's at layer {t['best_layer']} (chance 0.50).")
    if f.get("command"):
        lines.append(f"measured by: {f['command']}")
    return lines



def provenance(model, model_name: str | None = None, **extra: Any) -> dict:
    """Model, configuration and library versions, for results.json."""
    from importlib import metadata

    import vivit_lens

    versions = {"vivit_lens": vivit_lens.__version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}  # fmt: skip
    for pkg in ("transformers", "matplotlib", "av"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    cfg = model.cfg
    findings = model_findings(model_name)
    if findings:
        extra = {"model_findings": findings, **extra}
    return {
        "model": {"name_or_path": model_name, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                  "d_mlp": cfg.d_mlp, "num_frames": cfg.num_frames, "image_size": list(cfg.image_size),
                  "tubelet_size": list(cfg.tubelet_size), "grid_shape": list(cfg.grid_shape), "n_pos": cfg.n_pos,
                  "n_classes": cfg.n_classes, "architecture": cfg.original_architecture,
                  "readout": "mean over tokens" if len(cfg.readout_positions) > 1 else f"token {cfg.readout_positions[0]}",
                  "n_parameters": sum(p.numel() for p in model.parameters())},
        "versions": versions, "created": time.strftime("%Y-%m-%d %H:%M:%S %z"), **extra,
    }  # fmt: skip
