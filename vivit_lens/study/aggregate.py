"""`study`: the per-pair measurements of `analyze_pair` over many pairs per domain, with 95% bootstrap CIs,
and per-layer outcome probes.

    st = study(model, {"bowling": generate_pairs(model, "bowling", 20)})
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vivit_lens.interp.probes import bootstrap_ci
from vivit_lens.study.pair_analysis import STUDY_STEPS, analyze_pair
from vivit_lens.study.pairs import PairError, PairInput
from vivit_lens.study.results import _list, jsonable

# The logger keeps the name of the module these functions came from (vivit_lens.analysis)
logger = logging.getLogger("vivit_lens.analysis")

PROBE_CI_HALF_WIDTH = 0.08  # a study whose best-layer probe CI is wider than +-this is flagged as too small


def _per_pair_vectors(r: dict) -> dict[str, Any]:
    """The per-pair numbers that a study aggregates."""
    c, p = r["delta_cascade"], r["patching"]
    d = r["dla"]["components"]
    return {
        "cascade_token_mean": c["resid_post"]["token_mean"], "cascade_cls": c["resid_post"]["cls"],
        "attention_recovery": p["attention"], "mlp_recovery": p["mlp"], "head_recovery": p["heads"],
        "ablation_pixels_change": r["ablation"]["pixels"]["class_change"],
        "ablation_tokens_change": r["ablation"]["tokens"]["class_change"],
        "class_logit_clean": d["logit_clean"], "class_logit_corrupt": d["logit_corrupt"],
        "class_logit_difference": d["logit_clean"] - d["logit_corrupt"],
        "region_mass_ratio": r["cls_attention"]["region_mass_ratio"],
    }  # fmt: skip


@dataclass(frozen=True)
class StudyPair:
    """The per-pair part of `study`: `analyze_pair` with the study's options, reduced to what is aggregated.

    A picklable function of `(model, pair)`, so that a runner can call it on a model replica elsewhere.
    """

    label: int | str | None
    signal_layer: int | None
    signal_positions: str
    batch_size: int

    def __call__(self, model, pair: PairInput) -> dict:
        r = analyze_pair(model, pair.clean, pair.corrupt, label=self.label, region=pair.region,
                         signal_layer=self.signal_layer, signal_positions=self.signal_positions, steps=STUDY_STEPS,
                         norm_recovery=False, batch_size=self.batch_size, progress=False)  # fmt: skip
        return {"row": _per_pair_vectors(r), "same_top1": r["predictions"]["same_top1"],
                "top1": r["predictions"]["clean"][0]["label"]}  # fmt: skip


def study(
    model,
    pairs: Mapping[str, Sequence[PairInput]],
    *,
    probe_pairs: Mapping[str, Sequence[PairInput]] | None = None,
    label: int | str | None = None,
    signal_layer: int | None = None,
    signal_positions: str = "readout",
    n_boot: int = 2000,
    seed: int = 0,
    k_folds: int = 5,
    progress: bool = True,
    batch_size: int = 16,
    runner=None,
) -> dict:
    """The per-pair measurements of `analyze_pair` over many pairs per domain, as means with 95% bootstrap CIs,
    and per-layer outcome probes on [CLS].

    `pairs`: `{domain: [PairInput, ...]}` (e.g. `generate_pairs(model, "bowling", 20)`), analysed pair by pair.
    `probe_pairs`: the pairs the probes and the hidden-outcome checks use (default: `pairs`); forwards only, so
    they can be many more. The probe is grouped k-fold (`k_folds`) over pairs: every clip is predicted by a
    probe that never saw its pair. With two or more domains, a probe trained on one domain's outcomes is
    tested on another's (`transfer`).
    Returns a JSON-ready dict: `domains[d]` holds `per_pair` rows, the aggregated `ci` of each quantity and the
    `hidden` checks; `probe[d]` the per-layer probe records; `warnings` what makes the CIs unreliable.
    A pair whose analysis fails is listed in `domains[d]["failed"]` with its error (and warned about); the CIs
    are over the others. `runner`: a `vivit_lens.distributed` runner (`RayRunner(model, workers=N)`) that runs
    the pairs and the probe forwards on model replicas; the results are the serial run's, in the same order.
    """
    from vivit_lens.interp.probes import best_record, collect_activations, grouped_cv_probes, transfer_probes
    from vivit_lens.study.distributed import Failed, SerialRunner

    cfg = model.cfg
    probe_pairs = pairs if probe_pairs is None else probe_pairs
    out: dict[str, Any] = {"domains": {}, "probe": {}, "transfer": {}, "warnings": [],
                           "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95}}  # fmt: skip
    acts_by_domain: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for domain, plist in pairs.items():
        if not plist:
            raise PairError(f"domain {domain!r} has no pairs")
    job = StudyPair(label, signal_layer, signal_positions, batch_size)
    flat = [pair for plist in pairs.values() for pair in plist]
    done = iter((runner or SerialRunner(model)).map(job, flat, desc="study", progress=progress,
                                                    postfix=lambda pair: pair.name))  # fmt: skip
    for domain, plist in pairs.items():
        rows, names, same_top1, top1, failed = [], [], [], [], []
        for pair in plist:
            r = next(done)
            if isinstance(r, Failed):
                failed.append({"pair": pair.name, "error": r.error})
                out["warnings"].append(f"{domain}: pair {pair.name} failed and is left out: {r.error}")
                continue
            rows.append(r["row"])
            names.append(pair.name)
            same_top1.append(r["same_top1"])
            top1.append(r["top1"])
        if not rows:
            raise PairError(f"domain {domain!r}: every pair failed; the first: {failed[0]['pair']}: {failed[0]['error']}")
        d: dict[str, Any] = {"pairs": names, "n": len(rows), "same_top1_fraction": float(np.mean(same_top1)),
                             "clean_top1": top1, "layers": list(range(len(rows[0]["attention_recovery"])))}  # fmt: skip
        ci = {}
        for key in rows[0]:
            ci[key] = jsonable(bootstrap_ci([row[key] for row in rows], n_boot=n_boot, seed=seed))
        for key in ("attention_recovery", "mlp_recovery"):
            v = np.asarray([row[key] for row in rows], dtype=float)
            ci[key]["fraction_ge_100"] = _list((v >= 100).mean(0))
        d["ci"] = ci
        d["per_pair"] = [{"pair": n, **row} for n, row in zip(names, rows)]
        d["failed"] = failed
        out["domains"][domain] = d

    for domain, plist in probe_pairs.items():
        if len(plist) < 2:
            out["warnings"].append(f"{domain}: the probe needs at least 2 pairs, got {len(plist)}; no probe")
            continue
        clips = torch.cat([torch.cat([p.clean, p.corrupt]) for p in plist])
        acts, top = collect_activations(model, clips, batch_size=batch_size, progress=progress, return_top1=True,
                                        runner=runner)  # fmt: skip
        labels, groups = torch.tensor([1, 0] * len(plist)), torch.arange(len(plist)).repeat_interleave(2)
        acts_by_domain[domain] = (acts, labels, groups)
        k = min(k_folds, len(plist))
        recs = grouped_cv_probes(acts, labels, groups, k=k, n_boot=n_boot, seed=seed)
        best = best_record(recs)
        out["probe"][domain] = {
            "records": recs, "best_layer": best["layer"], "best": best, "chance": recs[0]["chance"],
            "n_pairs": len(plist), "k": k,
            "split": f"grouped {k}-fold over pairs: both clips of a pair in one fold; every clip predicted once by "
                     f"a probe trained on the other folds",
            "control": "the same probe and folds with the outcome labels permuted within each pair",
        }  # fmt: skip
        action = _domain_label(model, plist)
        same = (top[0::2] == top[1::2]).double().numpy()
        ci = bootstrap_ci(same, n_boot=n_boot, seed=seed)
        hidden = {"n_pairs": len(plist), "same_top1_fraction": float(same.mean()),
                  "same_top1_ci": [float(ci["lo"]), float(ci["hi"])]}  # fmt: skip
        if action is not None:
            hit = (top == action).double().reshape(-1, 2).mean(1).numpy()  # per pair: 0, 0.5 or 1
            ci = bootstrap_ci(hit, n_boot=n_boot, seed=seed)
            hidden |= {"action": cfg.id2label[action], "action_accuracy": float(hit.mean()),
                       "action_accuracy_ci": [float(ci["lo"]), float(ci["hi"])]}  # fmt: skip
        out["domains"].setdefault(domain, {})["hidden"] = hidden
        # The bootstrap over pairs can be narrow by accident (a probe that gives both clips of every pair one
        # label scores exactly 0.5 on each); the binomial bound at 50% for this many clips is the floor.
        half = max((best["test_hi"] - best["test_lo"]) / 2, 1.96 * math.sqrt(0.25 / len(labels)))
        out["probe"][domain]["ci_half_width"] = half
        if half > PROBE_CI_HALF_WIDTH:
            out["warnings"].append(
                f"{domain}: with {len(plist)} pairs the probe's 95% CI is +-{half:.2f} wide (more than "
                f"+-{PROBE_CI_HALF_WIDTH}); its accuracies mean little. Use at least "
                f"{math.ceil(0.25 * (1.96 / PROBE_CI_HALF_WIDTH) ** 2 / 2)} pairs (--probe-pairs)")
    for a, b in ((a, b) for a in acts_by_domain for b in acts_by_domain if a != b):
        (xa, ya, _), (xb, yb, gb) = acts_by_domain[a], acts_by_domain[b]
        out["transfer"][f"{a}->{b}"] = transfer_probes(xa, ya, xb, yb, gb, n_boot=n_boot, seed=seed)
    for w in out["warnings"]:
        logger.warning(w)
    out["signal"] = {"layer": cfg.n_layers - 1 if signal_layer is None else signal_layer, "positions": signal_positions}
    return out


def _domain_label(model, plist: Sequence[PairInput]) -> int | None:
    """The class a domain's clips should get: the generated pairs' action, when the model has that label."""
    action = plist[0].meta.get("action")
    return model.cfg.label2id.get(action) if action else None
