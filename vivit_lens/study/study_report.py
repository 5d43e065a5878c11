"""The study's HTML report: means with 95% bootstrap CIs over pairs, each CI cell opening its pairs.

    paths = write_study(analysis.study(model, pairs), "study/", formats=("html", "json", "csv"))
    paths["report"]      # study/report.html: self-contained, with the per-pair explorer
    html = render_study(st, images, interactive.study_views(st))

The page helpers (tables, figures, the page itself) are `report`'s; `report.write_study` is this one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from vivit_lens.study import interactive
from vivit_lens.study.analysis import RECOVERY_FORMULA, jsonable
from vivit_lens.study.report import (
    CI,
    _definitions_html,
    _e,
    _findings_html,
    _provenance_html,
    citation_html,
    figure,
    page,
    render_figures,
    table,
    write_outputs,
)  # fmt: skip
from vivit_lens.study.summary import num, readout_word, study_headline


def _ci_cell(ci: Mapping, i: int | None = None, fmt: str = "{:.1f}", keys: Sequence[str] = ("mean", "lo", "hi")) -> str:
    m, lo, hi = (ci[k] if i is None else ci[k][i] for k in keys)
    return f"{num(m, fmt)} [{num(lo, fmt)}, {num(hi, fmt)}]"


def _ci(ci: Mapping, dom: str, key: str, layer: int | None = None, head: int | None = None,
        fmt: str = "{:.1f}") -> CI:
    """A mean [95% CI] cell that opens its pairs in the explorer."""
    i = None if layer is None else layer if head is None else (layer, head)
    if isinstance(i, tuple):
        flat = {k: np.asarray(ci[k], float)[i] for k in ("mean", "lo", "hi")}
        text = _ci_cell(flat, None, fmt)
    else:
        text = _ci_cell(ci, i, fmt)
    return CI(text, f"{dom}|{key}|{'' if layer is None else layer}|{'' if head is None else head}")


def render_study(st: Mapping, images: Mapping[str, bytes], views: Mapping | None = None) -> str:
    """The HTML of a study over many pairs; `views` (from `interactive.study_views`) adds the per-pair explorer."""
    def fig(name: str, caption: str) -> str:
        return figure(images[name], caption, name) if name in images else ""

    items = [_e(line) + "." for line in study_headline(st)]  # lines start with a domain name: kept as written
    for dom, d in st["domains"].items():
        if "ci" in d:
            items.append(f"{_e(dom)}: region ablation changes the class logit by "
                         f"{_ci_cell(d['ci']['ablation_pixels_change'], fmt='{:+.3f}')} (pixels, mean [95% CI]); both "
                         f"analysed clips of a pair in the same class in {d['same_top1_fraction']:.0%}.")
        hid = d.get("hidden")
        if hid:
            acc = (f"; top-1 = {_e(hid['action'])} on {hid['action_accuracy']:.1%} of clips"
                   if "action_accuracy" in hid else "")
            items.append(f"Hidden ({_e(dom)}, {hid['n_pairs']} pairs): both clips of a pair get the same top-1 class "
                         f"in {hid['same_top1_fraction']:.1%}{acc}.")
    for w in st.get("warnings") or []:
        items.append(f"<b>Warning</b>: {_e(w)}")
    sec = [("summary", "Summary", citation_html("Repeats over many minimal pairs, with 95% bootstrap CIs, the "
                                                "analysis of") +
            "<ul class='summary'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" + _findings_html(st))]
    if views:
        sec.append(("pairs-explorer", "The pairs behind each CI", "<p class='meta'>Choose a quantity (and its layer "
                    "or head), or click any underlined mean [CI] in the tables below: every pair's value, the mean "
                    "and the 95% bootstrap CI. Click a dot or a row to select that pair.</p>"
                    + interactive.views_html(("explorer",))))  # fmt: skip
    body = fig("study_recovery", "Signal recovery per layer, mean over pairs with 95% bootstrap CI.")
    for dom, d in st["domains"].items():
        ci = d["ci"]
        rows = [(l, _ci(ci["attention_recovery"], dom, "attention_recovery", l),
                 _ci(ci["mlp_recovery"], dom, "mlp_recovery", l),
                 ci["attention_recovery"]["fraction_ge_100"][l], ci["mlp_recovery"]["fraction_ge_100"][l])
                for l in d["layers"]]  # fmt: skip
        body += f"<h3>{_e(dom)}: recovery (%) mean [95% CI]</h3>" + table(
            ["layer", "attention", "MLP", "share of pairs, attention >= 100%", "share of pairs, MLP >= 100%"], rows,
            "{:.2f}", left=3)  # fmt: skip
    sig = st.get("signal", {})
    if sig:
        formula = RECOVERY_FORMULA.format(hook=f"blocks.{sig['layer']}.hook_resid_post", positions=sig["positions"])
        body += f"<p class='meta'><b>Signal recovery</b> (per pair, then averaged). {_e(formula)}</p>"
    sec.append(("recovery", "Attention vs MLP patching over pairs", body))
    body = fig("study_cascade", "L2 norm of the residual delta after each block; band: 95% bootstrap CI.")
    for dom, d in st["domains"].items():
        ci = d["ci"]
        rows = [(l, _ci(ci["cascade_token_mean"], dom, "cascade_token_mean", l, fmt="{:.3g}"),
                 _ci(ci["cascade_cls"], dom, "cascade_cls", l, fmt="{:.3g}"))
                for l in range(len(ci["cascade_token_mean"]["mean"]))]  # fmt: skip
        body += f"<h3>{_e(dom)}</h3>" + table(["layer", "token mean", readout_word(st)], rows, left=3)
    sec.append(("cascade", "Activation delta over pairs", body))
    body = fig("study_probe", "Outcome probe per layer: grouped k-fold held-out accuracy and the shuffled-label "
                              "control, with 95% bootstrap CIs over pairs; right: transfer between domains.")
    for dom, p in st["probe"].items():
        if not p.get("records"):
            continue
        rows = [(r["layer"], _ci_cell(r, fmt="{:.3f}", keys=("test", "test_lo", "test_hi")), r["train"],
                 _ci_cell(r, fmt="{:.3f}", keys=("control", "control_lo", "control_hi")), r["control_train"])
                for r in p["records"]]  # fmt: skip
        body += (f"<h3>{_e(dom)}</h3><p class='meta'>{_e(p['split'])}; {p['n_pairs']} pairs "
                 f"({2 * p['n_pairs']} clips); control: {_e(p['control'])}; chance {p['chance']:.2f}</p>") + table(
            ["layer", "held-out accuracy [95% CI]", "train (mean over folds)", "control, held out [95% CI]",
             "control, train"], rows, "{:.3f}", left=2)  # fmt: skip
    for name, rec in (st.get("transfer") or {}).items():
        rows = [(r["layer"], _ci_cell(r, fmt="{:.3f}", keys=("test", "test_lo", "test_hi")), r["train"]) for r in rec]
        body += f"<h3>transfer {_e(name)}</h3>" + table(["layer", "accuracy on the other domain [95% CI]",
                                                          "train accuracy"], rows, "{:.3f}", left=2)  # fmt: skip
    sec.append(("probe", "Is the outcome there? Linear probes on held-out pairs", body))
    body = fig("study_heads", "Mean recovery when a single head's output is patched.")
    for dom, d in st["domains"].items():
        hc, rm = d["ci"]["head_recovery"], d["ci"].get("region_mass_ratio")
        n_heads = np.shape(hc["mean"])[1]
        flat = {k: np.asarray(hc[k], float).reshape(-1) for k in ("mean", "lo", "hi")}
        ratio = None if rm is None else np.asarray(rm["mean"], float).reshape(-1)
        order = np.argsort(-np.abs(flat["mean"]), kind="stable")[:10]
        rows = [(f"L{i // n_heads}H{i % n_heads}", _ci(hc, dom, "head_recovery", int(i) // n_heads, int(i) % n_heads),
                 "" if ratio is None else f"{ratio[i]:.2f}") for i in order]
        body += (f"<h3>{_e(dom)}: the 10 heads with the largest mean recovery</h3>" +
                 table(["head", "recovery (%) mean [95% CI]",
                        f"{readout_word(st)} attention on the outcome region / uniform share"],
                       rows, left=3))  # fmt: skip
    body += fig("study_scalars", "Region ablation and the clean - corrupt gap of the class logit, per pair.")
    rows = []
    for dom, d in st["domains"].items():
        for key in ("ablation_pixels_change", "ablation_tokens_change", "class_logit_difference"):
            rows.append((dom, key, _ci(d["ci"][key], dom, key, fmt="{:+.4f}")))
    body += table(["domain", "quantity", "mean [95% CI]"], rows, left=3)
    sec.append(("scalars", "Heads, ablation, logits", body))
    rows = [(dom, row["pair"], row["attention_recovery"][-1], row["mlp_recovery"][-1], row["ablation_pixels_change"],
             row["class_logit_difference"]) for dom, d in st["domains"].items() for row in d["per_pair"]]  # fmt: skip
    sec.append(("pairs", "Per pair", table(["domain", "pair", "attention recovery, last layer (%)",
                                           "MLP recovery, last layer (%)", "pixel ablation change",
                                           "class logit clean - corrupt"], rows, "{:.3f}", left=2)))  # fmt: skip
    if st.get("definitions"):
        sec.append(("definitions", "Definitions", _definitions_html(st["definitions"])))
    sec.append(("provenance", "Model, pairs, versions", _provenance_html(st)))
    meta = st.get("meta", {})
    sub = f"model <code>{_e(meta.get('model', {}).get('name_or_path'))}</code>; {_e(meta.get('created', ''))}"
    script = interactive.data_and_script(views, [a for a, _, _ in sec]) if views else ""
    return page("vivit-lens study", sec, sub, script)


def write_study(st: Mapping, out_dir: str | Path, *, formats: Sequence[str] = ("html", "json"),
                progress: bool = False) -> dict[str, Path]:  # fmt: skip
    """Write a study into `out_dir`: `report.html` (self-contained, with the per-pair explorer) and
    `figures/*.png` for "html", `results.json` for "json", `csv/*.csv` for "csv". Returns what went where."""
    from vivit_lens.study import plots, tables

    st = jsonable(st)

    def html(out: Path) -> str:
        images = render_figures(plots.study_figures(st, progress=progress), out)
        return render_study(st, images, interactive.study_views(st))

    return write_outputs(st, out_dir, formats, tables=tables.study_tables, html=html)


__all__ = ["render_study", "write_study"]
