"""Self-contained HTML reports (figures embedded as base64 PNG, inline CSS, no scripts) and the output folder.

    paths = write_analysis(results, "out/", frames=analysis.display_frames(clean, model.processor))
    paths["report"]      # out/report.html: opens offline, nothing fetched
    paths["results"]     # out/results.json: every number, with definitions and versions

`write_analysis` / `write_study` write `results.json`, `figures/*.png` and `report.html`.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vivit_lens.analysis import findings_lines, jsonable
from vivit_lens.probes import best_record

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.8em}
h3{margin-bottom:.3em}table{border-collapse:collapse;margin:.6em 0 1em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{margin:.8em 0 1.4em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;margin-top:.3em}.meta{color:#555;font-size:.9em}
.summary li{margin:.2em 0}code{background:#f5f5f5;padding:0 3px;border-radius:3px}
.pos{color:#1a6e1a}.neg{color:#b2182b}nav a{margin-right:.8em;font-size:.9em}
"""


def _e(x: Any) -> str:
    return html.escape(str(x))


def _num(x: Any, fmt: str = "{:.4g}") -> str:
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        return fmt.format(float(x))
    return _e(x)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "{:.4g}",
          left: int | set[int] = 1) -> str:  # fmt: skip
    """An HTML table; columns in `left` (the first `left` columns, or a set of indices) are left-aligned text,
    the others formatted numbers."""
    text = set(range(left)) if isinstance(left, int) else set(left)
    head = "".join(f"<th class='{'l' if i in text else ''}'>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = "".join(f"<td class='{'l' if i in text else ''}'>{_e(v) if i in text else _num(v, fmt)}</td>"
                        for i, v in enumerate(row))  # fmt: skip
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def figure(png: bytes, caption: str, alt: str) -> str:
    """An embedded PNG (data: URI) with a caption."""
    data = base64.b64encode(png).decode("ascii")
    return (f"<figure><img alt='{_e(alt)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")  # fmt: skip


def page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str = "") -> str:
    """A whole HTML document from `(anchor, heading, body_html)` sections."""
    nav = "".join(f"<a href='#{a}'>{_e(h)}</a>" for a, h, _ in sections)
    body = "".join(f"<h2 id='{a}'>{_e(h)}</h2>{b}" for a, h, b in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class='meta'>{subtitle}</p>"
            f"<nav>{nav}</nav>{body}</body></html>")  # fmt: skip


def _save_figures(figs: Mapping, out: Path) -> dict[str, bytes]:
    from vivit_lens.plots import to_png

    (out / "figures").mkdir(parents=True, exist_ok=True)
    pngs = {}
    for name, fig in figs.items():
        pngs[name] = to_png(fig)
        (out / "figures" / f"{name}.png").write_bytes(pngs[name])
    return pngs


def _write_json(res: Mapping, path: Path) -> None:
    path.write_text(json.dumps(jsonable(res), indent=1, allow_nan=False))


def _provenance_html(res: Mapping) -> str:
    meta = res.get("meta", {})
    rows = [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in meta.get("model", {}).items()]
    rows += [(f"version: {k}", v) for k, v in meta.get("versions", {}).items()]
    rows += [(k, json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in meta.items()
             if k not in ("model", "versions")]  # fmt: skip
    timings = res.get("timings_s", {})
    out = table(["field", "value"], [(k, str(v)) for k, v in rows], left=2)
    if timings:
        out += "<h3>Wall time per step</h3>" + table(["step", "seconds"], list(timings.items()), "{:.2f}")
    return out


def _definitions_html(defs: Mapping) -> str:
    return "<ul>" + "".join(f"<li><b>{_e(k)}</b>: {_e(v)}</li>" for k, v in defs.items()) + "</ul>"


# Single pair -------------------------------------------------------------------------------------
def _summary(res: Mapping) -> str:
    items = []
    pred = res.get("predictions")
    cls = res["class"]["label"]
    if pred:
        c, r = pred["clean"][0], pred["corrupt"][0]
        items.append(f"Top-1: clean <b>{_e(c['label'])}</b> ({c['logit']:.3f}), corrupt <b>{_e(r['label'])}</b> "
                     f"({r['logit']:.3f}); same class: {_num(pred['same_top1'])}. Class analysed: <b>{_e(cls)}</b>.")
    cas = res.get("delta_cascade")
    if cas and cas["resid_post"].get("growth_vs_layer0"):
        g = cas["resid_post"]["growth_vs_layer0"]
        tm = cas["resid_post"]["token_mean"]
        items.append(f"Activation delta (mean over tokens) grows from {tm[0]:.3g} after layer 0 to {tm[-1]:.3g} after "
                     f"layer {len(tm) - 1} (x{g[-1]:.2f}); at [CLS]: {cas['resid_post']['cls'][0]:.3g} to "
                     f"{cas['resid_post']['cls'][-1]:.3g}.")  # fmt: skip
    ab = res.get("ablation")
    if ab:
        items.append(f"Ablating the outcome region ({res['region']['n_tokens']} tokens) changes the '{_e(cls)}' logit "
                     f"by {ab['pixels']['class_change']:+.4f} (pixels) / {ab['tokens']['class_change']:+.4f} (tokens).")
    p = res.get("patching", {})
    if "attention" in p:
        att, mlp = np.asarray(p["attention"], float), np.asarray(p["mlp"], float)
        full = [l for l, v in zip(p["layers"], mlp) if v >= 100]
        items.append(f"Patching single blocks recovers {att.min():.0f}% to {att.max():.0f}% of the signal for attention "
                     f"and {mlp.min():.0f}% to {mlp.max():.0f}% for MLPs; MLPs at >= 100%: "
                     f"{', '.join(f'L{l}' for l in full) or 'none'}.")  # fmt: skip
    if "heads" in p:
        m = np.asarray(p["heads"], float)
        l, h = np.unravel_index(np.nanargmax(np.abs(m)), m.shape)
        items.append(f"Strongest single head: L{l}H{h} ({m[l, h]:.1f}% recovery).")
    pth = res.get("paths") or {}
    for entry in pth.get("into_mlps", [])[:1]:
        tops = ", ".join(f"L{t['layer']}H{t['head']} ({t['effect']:.1f}%)" for t in entry["top_heads"][:3])
        items.append(f"Heads feeding MLP {entry['mlp_layer']} (the strongest composer) most: {tops}.")
    at = res.get("attribution") or {}
    if "heads" in at:
        a = at["heads"]["agreement"]
        items.append(f"Attribution patching vs exact per-head patching: Pearson {_num(a['pearson'], '{:.3f}')}, "
                     f"Spearman {_num(a['spearman'], '{:.3f}')}, top-{a['k']} overlap {a['topk_overlap']:.2f}.")
    return "<ul class='summary'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" + _findings_html(res)


def _findings_html(res: Mapping) -> str:
    """What the model is known to compute, from its training record (measured on many fresh pairs)."""
    f = res.get("meta", {}).get("model_findings")
    if not f:
        return ""
    return ("<h3>What this model computes (measured on fresh pairs, not on this pair)</h3><ul class='summary'>" +
            "".join(f"<li>{_e(line)}</li>" for line in findings_lines(f)) + "</ul>")


def render_analysis(res: Mapping, pngs: Mapping[str, bytes]) -> str:
    """The HTML of a single-pair analysis."""
    cls = res["class"]["label"]
    meta = res.get("meta", {})
    sec: list[tuple[str, str, str]] = [("summary", "Summary", _summary(res))]

    def fig(name: str, caption: str) -> str:
        return figure(pngs[name], caption, name) if name in pngs else ""

    if "predictions" in res:
        p = res["predictions"]
        rows = [(c["rank"], c["label"], c["logit"], c["prob"], r["label"], r["logit"], r["prob"])
                for c, r in zip(p["clean"], p["corrupt"])]  # fmt: skip
        sec.append(("predictions", "Top predictions", table(
            ["rank", "clean: class", "logit", "prob", "corrupt: class", "logit", "prob"], rows, left={0, 1, 4})))
    if "delta_cascade" in res:
        c = res["delta_cascade"]
        rows = [(l, c["resid_post"]["token_mean"][l], c["resid_post"]["cls"][l], c["attn_out"]["token_mean"][l],
                 c["mlp_out"]["token_mean"][l]) for l in c["layers"]]  # fmt: skip
        sec.append(("cascade", "Activation delta per layer", fig(
            "delta_cascade", "L2 norm of act_clean - act_corrupt, per layer (the paper's Figure 1).") + table(
            ["layer", "resid_post, token mean", "resid_post, [CLS]", "attn_out, token mean", "mlp_out, token mean"],
            rows)))  # fmt: skip
    if "dla" in res:
        d = res["dla"]["tokens"]
        body = fig("dla_tokens", f"Contribution of each source token to the '{cls}' logit through the heads' [CLS] "
                                 f"outputs (rows: tubelet time, columns: spatial token). Token map total "
                                 f"{d['total_clean']:.3f}, [CLS] itself {d['cls_self_clean']:.3f} (clean).")
        body += fig("dla_components", "Direct logit attribution of each residual-stream writer; the bars plus "
                                      "'bias' sum to the logit.")
        sec.append(("dla", "Direct logit attribution", body))
    if "cls_attention" in res:
        a = res["cls_attention"]
        rows = [(f"L{h['layer']}H{h['head']}", h["dla"], h["region_mass"], h["region_mass_corrupt"], h["max_weight"],
                 h["cls_self"], str(tuple(h["peak_thw"]))) for h in a["heads"]]  # fmt: skip
        body = fig("cls_attention", "[CLS] attention per tubelet, overlaid on the middle frame of each tubelet.")
        body += table(["head", "DLA (logits)", "region mass", "region mass (corrupt)", "max weight", "on [CLS]",
                       "peak (t, row, col)"], rows)  # fmt: skip
        body += (f"<p class='meta'>Heads ranked by {_e(a['ranking'])}. Uniform attention would put "
                 f"{a['uniform_mass']:.1%} on the region.</p>")
        rows2 = [(f"L{r['layer']}H{r['head']}", r["mass"], str(tuple(r["peak"]))) for r in a["top_by_region_mass"]]
        body += "<h3>Heads whose [CLS] attention falls most on the region</h3>" + table(
            ["head", "region mass", "peak (t, row, col)"], rows2)
        sec.append(("attention", "[CLS] attention", body))
    if "ablation" in res:
        ab = res["ablation"]
        body = fig("ablation", "Logits of the clean clip's top classes before and after ablating the region.")
        reg = res["region"]
        body += (f"<p class='meta'>Region ({_e(reg['source'])}): box x0,y0,x1,y1 = {tuple(reg['box_xyxy'])} "
                 f"model-input pixels, frames {reg['frames'][0]}-{reg['frames'][1] - 1}, {reg['n_tokens']} tokens "
                 f"({ab['region_fraction_of_tokens']:.1%} of the tubelets).</p>")
        for key in ("pixels", "tokens"):
            rows = [(r["rank"], f"{r['label']} ({r['original']:.4f})", f"{r['ablated_top_label']} "
                     f"({r['ablated_top_logit']:.4f})", r["change"], r["ablated_rank"]) for r in ab[key]["table"]]
            body += f"<h3>Ablation of the region's {key} (the paper's Table 1)</h3>" + table(
                ["rank", "original (logit)", "ablated (logit)", "change of this class", "its rank after"], rows,
                left=3)  # fmt: skip
        sec.append(("ablation", "Region ablation", body))
    p = res.get("patching", {})
    if "attention" in p:
        rows = [(r["layer"], r["attention"], r["mlp"], r.get("attention_norm"), r.get("mlp_norm")) for r in p["table"]]
        body = fig("recovery", p["formula"])
        body += "<h3>Signal recovery per layer (the paper's Table 2)</h3>" + table(
            ["layer", "attention (%)", "MLP (%)", "attention, norm (%)", "MLP, norm (%)"], rows, "{:.1f}")
        body += f"<p class='meta'><b>Formula.</b> {_e(p['formula'])} The 'norm' columns: {_e(res.get('definitions', {}).get('recovery_norm', ''))}</p>"
        if "heads" in p:
            body += fig("head_patching", "Recovery when one head's output (hook_z, every position) is patched.")
        sec.append(("patching", "Attention vs MLP patching", body))
    if res.get("paths"):
        pth = res["paths"]
        body = fig("paths", "Path patching with every other component frozen at its corrupt value: the effect of "
                            "one sender reaching one receiver along the direct residual path (% of the signal).")
        for entry in pth.get("into_mlps", []):
            rows = [(f"L{t['layer']}H{t['head']}", t["effect"]) for t in entry["top_heads"]]
            body += (f"<h3>Heads into MLP {entry['mlp_layer']} (recovery {entry['mlp_recovery']:.1f}%)</h3>"
                     + table(["head", "path effect (%)"], rows, "{:.2f}"))  # fmt: skip
        direct = pth.get("direct_to_final")
        if direct:
            m = np.asarray(direct["heads"], float)
            order = np.argsort(-np.abs(m).reshape(-1))[:5]
            rows = [(f"L{o // m.shape[1]}H{o % m.shape[1]}", m.reshape(-1)[o]) for o in order]
            rows += [(f"MLP{l}", v) for l, v in sorted(enumerate(direct["mlps"]), key=lambda kv: -abs(kv[1]))[:3]]
            body += f"<h3>Strongest direct paths to the {_e(direct['receiver'])}</h3>" + table(
                ["sender", "direct effect (%)"], rows, "{:.2f}")
        elif pth.get("direct_note"):
            body += f"<p class='meta'>{_e(pth['direct_note'])}</p>"
        body += fig("circuit", "The strongest paths as a graph (node colour: direct effect on the final residual; "
                               "edge width: path effect).")
        sec.append(("paths", "Path patching", body))
    if res.get("attribution"):
        rows = [(k, v["agreement"]["pearson"], v["agreement"]["spearman"], v["agreement"]["topk_overlap"],
                 v["agreement"]["k"]) for k, v in res["attribution"].items()]  # fmt: skip
        body = fig("attribution", "Attribution patching estimates vs exact patching, same units (% of signal).")
        body += table(["comparison", "Pearson", "Spearman", "top-k overlap", "k"], rows, "{:.3f}")
        sec.append(("attribution", "Attribution vs exact", body))
    if res.get("definitions"):
        sec.append(("definitions", "Definitions", _definitions_html(res["definitions"])))
    sec.append(("provenance", "Model, inputs, versions", _provenance_html(res)))
    inputs = meta.get("inputs", {})
    sub = (f"model <code>{_e(meta.get('model', {}).get('name_or_path'))}</code>; clean <code>"
           f"{_e(inputs.get('clean'))}</code>; corrupt <code>{_e(inputs.get('corrupt'))}</code>; {_e(meta.get('created', ''))}")
    return page("vivit-lens analysis", sec, sub)


def write_analysis(res: Mapping, out_dir: str | Path, frames: np.ndarray | None = None,
                   progress: bool = False) -> dict[str, Path]:  # fmt: skip
    """Write `results.json`, `figures/*.png` and a self-contained `report.html` for one pair's analysis."""
    from vivit_lens import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    res = jsonable(res)
    _write_json(res, out / "results.json")
    tubelet = res.get("meta", {}).get("model", {}).get("tubelet_size")
    pngs = _save_figures(plots.analysis_figures(res, frames, tubelet, progress=progress), out)
    (out / "report.html").write_text(render_analysis(res, pngs), encoding="utf-8")
    return {"results": out / "results.json", "report": out / "report.html", "figures": out / "figures"}


# Study -------------------------------------------------------------------------------------------
def _ci_cell(ci: Mapping, i: int | None = None, fmt: str = "{:.1f}", keys: Sequence[str] = ("mean", "lo", "hi")) -> str:
    m, lo, hi = (ci[k] if i is None else ci[k][i] for k in keys)
    return f"{fmt.format(m)} [{fmt.format(lo)}, {fmt.format(hi)}]"


def render_study(st: Mapping, pngs: Mapping[str, bytes]) -> str:
    """The HTML of a study over many pairs."""
    def fig(name: str, caption: str) -> str:
        return figure(pngs[name], caption, name) if name in pngs else ""

    items = []
    for dom, d in st["domains"].items():
        ci = d["ci"]
        mlp, att = np.asarray(ci["mlp_recovery"]["mean"], float), np.asarray(ci["attention_recovery"]["mean"], float)
        items.append(f"<b>{_e(dom)}</b> ({d['n']} pairs; both clips in the same class in {d['same_top1_fraction']:.0%}):"
                     f" mean attention recovery {att.min():.0f}% to {att.max():.0f}%, MLP {mlp.min():.0f}% to "
                     f"{mlp.max():.0f}% per layer; region ablation changes the class logit by "
                     f"{_ci_cell(ci['ablation_pixels_change'], fmt='{:+.3f}')} (pixels, mean [95% CI]).")  # fmt: skip
    for dom, d in st["domains"].items():
        hid = d.get("hidden")
        if hid:
            acc = (f"; top-1 = {_e(hid['action'])} on {hid['action_accuracy']:.1%} of clips"
                   if "action_accuracy" in hid else "")
            items.append(f"Hidden ({_e(dom)}, {hid['n_pairs']} pairs): both clips of a pair get the same top-1 class "
                         f"in {hid['same_top1_fraction']:.1%}{acc}.")
    for dom, p in st["probe"].items():
        if p.get("records"):
            b = p["best"]
            items.append(f"Present ({_e(dom)}): the outcome probe on [CLS] reaches {_ci_cell(b, fmt='{:.2f}', keys=('test', 'test_lo', 'test_hi'))} "
                         f"held-out accuracy at layer {b['layer']} (grouped {p['k']}-fold over {p['n_pairs']} pairs; "
                         f"shuffled-label control {_ci_cell(b, fmt='{:.2f}', keys=('control', 'control_lo', 'control_hi'))}, "
                         f"chance {p['chance']:.2f}).")
    for name, rec in (st.get("transfer") or {}).items():
        b = best_record(rec)
        items.append(f"Transfer {_e(name)}: best {_ci_cell(b, fmt='{:.2f}', keys=('test', 'test_lo', 'test_hi'))} at "
                     f"layer {b['layer']} (chance 0.50).")
    for w in st.get("warnings") or []:
        items.append(f"<b>Warning</b>: {_e(w)}")
    sec = [("summary", "Summary", "<ul class='summary'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>" +
            _findings_html(st))]
    body = fig("study_recovery", "Signal recovery per layer, mean over pairs with 95% bootstrap CI.")
    for dom, d in st["domains"].items():
        ci = d["ci"]
        rows = [(l, _ci_cell(ci["attention_recovery"], l), _ci_cell(ci["mlp_recovery"], l),
                 ci["attention_recovery"]["fraction_ge_100"][l], ci["mlp_recovery"]["fraction_ge_100"][l])
                for l in d["layers"]]  # fmt: skip
        body += f"<h3>{_e(dom)}: recovery (%) mean [95% CI]</h3>" + table(
            ["layer", "attention", "MLP", "share of pairs, attention >= 100%", "share of pairs, MLP >= 100%"], rows,
            "{:.2f}", left=3)  # fmt: skip
    sec.append(("recovery", "Attention vs MLP patching over pairs", body))
    body = fig("study_cascade", "L2 norm of the residual delta after each block; band: 95% bootstrap CI.")
    for dom, d in st["domains"].items():
        ci = d["ci"]
        rows = [(l, _ci_cell(ci["cascade_token_mean"], l, "{:.3g}"), _ci_cell(ci["cascade_cls"], l, "{:.3g}"))
                for l in range(len(ci["cascade_token_mean"]["mean"]))]  # fmt: skip
        body += f"<h3>{_e(dom)}</h3>" + table(["layer", "token mean", "[CLS]"], rows, left=3)
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
        rows = [(f"L{i // n_heads}H{i % n_heads}", _ci_cell(flat, int(i)), "" if ratio is None else f"{ratio[i]:.2f}")
                for i in order]
        body += (f"<h3>{_e(dom)}: the 10 heads with the largest mean recovery</h3>" +
                 table(["head", "recovery (%) mean [95% CI]", "[CLS] attention on the outcome region / uniform share"],
                       rows, left=3))  # fmt: skip
    body += fig("study_scalars", "Region ablation and the clean - corrupt gap of the class logit, per pair.")
    rows = []
    for dom, d in st["domains"].items():
        for key in ("ablation_pixels_change", "ablation_tokens_change", "class_logit_difference"):
            rows.append((dom, key, _ci_cell(d["ci"][key], fmt="{:+.4f}")))
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
    return page("vivit-lens study", sec, sub)


def write_study(st: Mapping, out_dir: str | Path, progress: bool = False) -> dict[str, Path]:
    """Write `results.json`, `figures/*.png` and a self-contained `report.html` for a study."""
    from vivit_lens import plots

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    st = jsonable(st)
    _write_json(st, out / "results.json")
    pngs = _save_figures(plots.study_figures(st, progress=progress), out)
    (out / "report.html").write_text(render_study(st, pngs), encoding="utf-8")
    return {"results": out / "results.json", "report": out / "report.html", "figures": out / "figures"}


__all__ = ["figure", "page", "render_analysis", "render_study", "table", "write_analysis", "write_study"]
