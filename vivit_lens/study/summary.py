"""Headline numbers of an analysis or a study in plain sentences: the terminal summary and the report's first lines.

    lines = analysis_headline(res)     # res: analysis.analyze_pair(...) (or a saved results.json)
    lines = study_headline(st)         # st: analysis.study(...)
    text = "\n".join(lines)            # what the CLI writes to stderr under "summary:"
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vivit_lens.interp.probes import best_record


def num(v: float | int | np.ndarray | None, fmt: str = "{:.1f}") -> str:  # noqa: PYI041 (beartype: int is no float)
    """`fmt` of `v`, with no negative zero ("-0%" reads as a sign that is not there) and "n/a" for missing."""
    if v is None or not np.isfinite(float(v)):
        return "n/a"
    text = fmt.format(float(v))
    return text[1:] if text.startswith("-") and float(text[1:].rstrip("%x")) == 0 else text


def pct(v: float | int | None, digits: int = 1) -> str:  # noqa: PYI041
    return num(v, f"{{:.{digits}f}}") + "%"


def _best(values) -> tuple[int, float]:
    a = np.asarray(values, dtype=float)
    i = int(np.nanargmax(a))
    return i, float(a[i])


def _head_name(i: int, n_heads: int) -> str:
    return f"L{i // n_heads}H{i % n_heads}"


def strongest_direct_path(direct: Mapping) -> tuple[str, float]:
    """The sender with the largest |direct effect| on the final residual: `(name, effect %)`."""
    heads = np.asarray(direct["heads"], dtype=float)
    cands = [(_head_name(i, heads.shape[1]), v) for i, v in enumerate(heads.reshape(-1))]
    cands += [(f"MLP {l}", float(v)) for l, v in enumerate(direct["mlps"]) if v is not None]
    return max(cands, key=lambda kv: abs(kv[1]) if np.isfinite(kv[1]) else -1.0)


def analysis_headline(res: Mapping) -> list[str]:
    """The headline numbers of one pair's analysis, one sentence each."""
    lines = []
    pred = res.get("predictions")
    if pred:
        c, r = pred["clean"][0], pred["corrupt"][0]
        same = "the same class" if pred["same_top1"] else "different classes"
        lines.append(f"top-1: clean {c['label']} (p {c['prob']:.2f}), corrupt {r['label']} (p {r['prob']:.2f}): {same}")
    cas = res.get("delta_cascade")
    if cas:
        tm = np.asarray(cas["resid_post"]["token_mean"], dtype=float)
        rise = np.diff(tm, prepend=cas["embed"]["token_mean"])
        l = int(np.argmax(rise))
        lines.append(f"activation delta (mean over tokens): {num(tm[0], '{:.3g}')} after layer 0 to "
                     f"{num(tm[-1], '{:.3g}')} after layer {len(tm) - 1}; it rises most in layer {l} "
                     f"(+{num(rise[l], '{:.3g}')})")
    p = res.get("patching", {})
    if "attention" in p:
        la, va = _best(p["attention"])
        lm, vm = _best(p["mlp"])
        lines.append(f"patching clean into corrupt: best attention block layer {la} recovers {pct(va)} of the signal, "
                     f"best MLP block layer {lm} {pct(vm)}")
    if "heads" in p:
        m = np.asarray(p["heads"], dtype=float)
        i, v = _best(m.reshape(-1))
        lines.append(f"strongest single head: {_head_name(i, m.shape[1])}, {pct(v)} recovery")
    direct = (res.get("paths") or {}).get("direct_to_final")
    if direct:
        name, v = strongest_direct_path(direct)
        lines.append(f"strongest direct path: {name} -> {direct['receiver']}, {pct(v)} of the signal")
    at = (res.get("attribution") or {}).get("heads")
    if at:
        a = at["agreement"]
        lines.append(f"attribution patching vs exact (heads): Pearson {num(a['pearson'], '{:.2f}')}, Spearman "
                     f"{num(a['spearman'], '{:.2f}')}, top-{a['k']} overlap {num(a['topk_overlap'], '{:.2f}')}")
    return lines


def _ci(ci: Mapping, i=None, fmt: str = "{:.1f}", keys=("mean", "lo", "hi")) -> str:
    m, lo, hi = (np.asarray(ci[k], dtype=float) if i is None else np.asarray(ci[k], dtype=float).reshape(-1)[i]
                 for k in keys)
    return f"{num(m, fmt)} [{num(lo, fmt)}, {num(hi, fmt)}]"


def study_headline(st: Mapping) -> list[str]:
    """The headline numbers of a study, one sentence per domain and per transfer, means with 95% CIs."""
    lines = []
    for dom, d in st["domains"].items():
        if "ci" not in d:
            continue
        ci = d["ci"]
        la, _ = _best(ci["attention_recovery"]["mean"])
        lm, _ = _best(ci["mlp_recovery"]["mean"])
        heads = np.asarray(ci["head_recovery"]["mean"], dtype=float)
        hi, _ = _best(heads.reshape(-1))
        text = (f"{dom} ({d['n']} pairs): best attention block layer {la} {_ci(ci['attention_recovery'], la)}%, "
                f"best MLP layer {lm} {_ci(ci['mlp_recovery'], lm)}%, strongest head "
                f"{_head_name(hi, heads.shape[1])} {_ci(ci['head_recovery'], hi)}%")
        probe = st.get("probe", {}).get(dom, {})
        if probe.get("records"):
            b = probe["best"]
            text += (f"; outcome probe {_ci(b, fmt='{:.2f}', keys=('test', 'test_lo', 'test_hi'))} at layer "
                     f"{b['layer']} (control {num(b['control'], '{:.2f}')}, chance {num(probe['chance'], '{:.2f}')})")
        lines.append(text)
    for name, rec in (st.get("transfer") or {}).items():
        b = best_record(rec)
        lines.append(f"transfer {name}: {_ci(b, fmt='{:.2f}', keys=('test', 'test_lo', 'test_hi'))} at layer "
                     f"{b['layer']} (chance 0.50)")
    return lines


def readout_word(res: Mapping) -> str:
    """What a report calls the readout of the model behind `res` (its meta): "[CLS]" for a model that reads one
    token (ViViT), "readout (token mean)" for one that reads the mean over tokens (VideoMAE)."""
    readout = res.get("meta", {}).get("model", {}).get("readout")
    return "readout (token mean)" if readout == "mean over tokens" else "[CLS]"


__all__ = ["analysis_headline", "num", "pct", "readout_word", "strongest_direct_path", "study_headline"]
