"""Self-contained HTML reports (figures as data URIs, inline CSS and script, nothing fetched) and the output folder.

    paths = write_analysis(results, "out/", frames=analysis.display_frames(clean, model.processor))
    paths["report"]      # out/report.html: opens offline; its interactive views come from `interactive`
    paths["results"]     # out/results.json: every number, with definitions and versions

`write_analysis` / `write_study` write `report.html` with `figures/*.png`, `results.json` and `csv/*.csv`
(tidy tables, see `tables`), as `formats` asks.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vivit_lens.study import interactive, paper
from vivit_lens.study.analysis import findings_lines, jsonable
from vivit_lens.study.summary import analysis_headline, num, pct, readout_word

FORMATS = ("html", "json", "csv")
FIGURE_DPI = 150  # plots.FIGURE_DPI (not imported here: matplotlib loads only when figures are drawn)

CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;padding:0 16px;
color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:3px;margin-top:1.8em}
h3{margin-bottom:.3em}table{border-collapse:collapse;margin:.6em 0 1em 0;font-size:.88em}
th,td{border:1px solid #ccc;padding:3px 8px;text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
figure{margin:.8em 0 1.4em 0}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.85em;color:#555;margin-top:.3em}.meta{color:#555;font-size:.9em}
.summary li{margin:.2em 0}code{background:#f5f5f5;padding:0 3px;border-radius:3px}
.pos{color:#1a6e1a}.neg{color:#b2182b}nav a{margin-right:.8em;font-size:.9em}.cite{font-size:.9em;color:#333}
td.vl-ci{cursor:pointer;text-decoration:underline dotted #888}
""" + interactive.CSS


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


@dataclass(frozen=True)
class CI:
    """A table cell holding a mean [95% CI] whose per-pair values the study's explorer can show (`key`:
    "domain|quantity|layer|head")."""

    text: str
    key: str


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], fmt: str = "{:.4g}",
          left: int | set[int] = 1) -> str:  # fmt: skip
    """An HTML table; columns in `left` (the first `left` columns, or a set of indices) are left-aligned text,
    the others formatted numbers; a `CI` cell links to its pairs."""
    text = set(range(left)) if isinstance(left, int) else set(left)
    head = "".join(f"<th class='{'l' if i in text else ''}'>{_e(h)}</th>" for i, h in enumerate(headers))
    body = []
    for row in rows:
        cells = []
        for i, v in enumerate(row):
            cls = "l" if i in text else ""
            if isinstance(v, CI):
                cells.append(f"<td class='{cls}' data-ci='{_e(v.key)}'>{_e(v.text)}</td>")
            else:
                cells.append(f"<td class='{cls}'>{_e(v) if i in text else _num(v, fmt)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def figure(image: bytes, caption: str, alt: str) -> str:
    """An embedded PNG or JPEG (data: URI) with a caption."""
    mime = "png" if image[:4] == b"\x89PNG" else "jpeg"
    data = base64.b64encode(image).decode("ascii")
    size = ""
    if mime == "png":  # shown at 100 dpi (sharp on high-density screens), at most the page's width
        width = int.from_bytes(image[16:20], "big")
        size = f" style='width:{round(width * 100 / FIGURE_DPI)}px'"
    return (f"<figure><img alt='{_e(alt)}'{size} src='data:image/{mime};base64,{data}'>"
            f"<figcaption>{_e(caption)}</figcaption></figure>")  # fmt: skip


def page(title: str, sections: Sequence[tuple[str, str, str]], subtitle: str = "", script: str = "") -> str:
    """A whole HTML document from `(anchor, heading, body_html)` sections; `script` goes at the end of the body."""
    nav = "".join(f"<a href='#{a}'>{_e(h)}</a>" for a, h, _ in sections)
    body = "".join(f"<section id='{a}'><h2>{_e(h)}</h2>{b}</section>" for a, h, b in sections)
    return (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{_e(title)}</h1><p class='meta'>{subtitle}</p>"
            f"<nav>{nav}</nav>{body}{script}</body></html>")  # fmt: skip


def citation_html(what: str) -> str:
    """One line naming the paper whose tables and figures the report reproduces."""
    return (f"<p class='cite'>{what} <i>{_e(paper.TITLE)}</i> by {_e(paper.AUTHOR)} (arXiv:{paper.ARXIV}, "
            f"{paper.YEAR}); 'Table 1', 'Table 2' and 'Figure 1' below are that paper's.</p>")


def render_figures(figs: Mapping, out: Path | None) -> dict[str, bytes]:
    """PNG bytes of every figure at `plots.FIGURE_DPI`, also written to `out/figures/` when `out` is given; the
    report embeds the same PNGs."""
    from vivit_lens.study.plots import to_png

    if out is not None:
        (out / "figures").mkdir(parents=True, exist_ok=True)
    pngs = {}
    for name, fig in figs.items():
        pngs[name] = to_png(fig)
        if out is not None:
            (out / "figures" / f"{name}.png").write_bytes(pngs[name])
    return pngs


def write_json(res: Mapping, path: Path) -> None:
    path.write_text(json.dumps(jsonable(res), indent=1, allow_nan=False), encoding="utf-8")


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
ANALYSIS_VIEWS = ("explore", "patching", "paths")  # sections that hold an interactive view


def _summary(res: Mapping) -> str:
    items = [_e(line[0].upper() + line[1:]) + "." for line in analysis_headline(res)]
    ab = res.get("ablation")
    if ab:
        cls = res["class"]["label"]
        items.append(f"Ablating the outcome region ({res['region']['n_tokens']} tokens) changes the '{_e(cls)}' logit "
                     f"by {num(ab['pixels']['class_change'], '{:+.4f}')} (pixels) / "
                     f"{num(ab['tokens']['class_change'], '{:+.4f}')} (tokens).")
    p = res.get("patching", {})
    if "mlp" in p:
        full = [l for l, v in zip(p["layers"], p["mlp"]) if v is not None and v >= 100]
        items.append(f"MLP blocks that recover the whole signal on their own (>= 100%, the paper's 'MLPs compose'): "
                     f"{', '.join(f'layer {l}' for l in full) or 'none'}.")
    return "<ul class='summary'>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _findings_html(res: Mapping) -> str:
    """What the model is known to compute, from its training record (measured on many fresh pairs)."""
    f = res.get("meta", {}).get("model_findings")
    if not f:
        return ""
    return ("<p class='meta'>From the model's training record: measured on many fresh pairs, not on the pair or "
            "pairs of this report.</p><ul class='summary'>" +
            "".join(f"<li>{_e(line)}</li>" for line in findings_lines(f, readout_word(res))) + "</ul>")


def _region_text(reg: Mapping) -> str:
    return (f"box x0,y0,x1,y1 = {tuple(reg['box_xyxy'])} (model-input pixels, x1 and y1 exclusive), input frames "
            f"{reg['frames'][0]}-{reg['frames'][1] - 1}, {reg['n_tokens']} tokens")


def _paths_tables(pth: Mapping) -> str:
    body = ""
    direct = pth.get("direct_to_final")
    if direct:
        m = np.asarray(direct["heads"], float)
        order = np.argsort(-np.abs(m).reshape(-1))[:5]
        rows = [(f"L{o // m.shape[1]}H{o % m.shape[1]}", m.reshape(-1)[o]) for o in order]
        rows += [(f"MLP {l}", v) for l, v in sorted(enumerate(direct["mlps"]), key=lambda kv: -abs(kv[1]))[:3]]
        body += f"<h3>Strongest direct paths to the {_e(direct['receiver'])}</h3>" + table(
            ["sender", "direct effect (%)"], rows, "{:.2f}")
    elif pth.get("direct_note"):
        body += f"<p class='meta'>{_e(pth['direct_note'])}</p>"
    for entry in pth.get("into_mlps", []):
        l = entry["mlp_layer"]
        rows = [(f"L{t['layer']}H{t['head']}", t["effect"]) for t in entry["top_heads"]]
        n_heads = len(entry["heads"][0]) if entry["heads"] else 0
        unreachable = (len(entry["heads"]) - l - 1) * n_heads
        note = f"; the {unreachable} heads of layers {l + 1}+ cannot reach it" if unreachable else ""
        body += (f"<h3>Heads into MLP {l} (MLP {l} recovers {pct(entry['mlp_recovery'])}{note})</h3>"
                 + table(["head", "path effect (%)"], rows, "{:.2f}"))  # fmt: skip
    return body


def render_analysis(res: Mapping, images: Mapping[str, bytes], views: Mapping | None = None) -> str:
    """The HTML of a single-pair analysis; `views` (from `interactive.analysis_views`) adds the interactive views."""
    cls = res["class"]["label"]
    rw = readout_word(res)  # "[CLS]" on ViViT, "readout (token mean)" on a mean-pooling VideoMAE
    meta = res.get("meta", {})
    sec: list[tuple[str, str, str]] = [
        ("summary", "Summary", citation_html("Reproduces, on one minimal pair, the analysis of") + _summary(res))]

    def fig(name: str, caption: str) -> str:
        return figure(images[name], caption, name) if name in images else ""

    def view(part: str) -> str:
        return interactive.views_html((part,), rw) if views else ""

    if views:
        sec.append(("explore", "Explore the clips", "<p class='meta'>Move through the frames of both clips; the "
                    f"overlay shows, per token, the {rw} attention of the head chosen (or clicked in the head map "
                    "below), the direct logit attribution, or the size of the clean - corrupt residual difference "
                    f"after a block. Cyan box: the outcome region ({_region_text(res['region'])}).</p>"
                    + view("scrubber")))  # fmt: skip
    if _findings_html(res):
        sec.append(("model", "What this model computes", _findings_html(res)))
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
            "delta_cascade", "L2 norm of act_clean - act_corrupt, per layer (Figure 1 of the paper).") + table(
            ["layer", "resid_post, token mean", f"resid_post, {rw}", "attn_out, token mean", "mlp_out, token mean"],
            rows)))  # fmt: skip
    if "dla" in res:
        d = res["dla"]["tokens"]
        body = fig("dla_tokens", f"Contribution of each source token to the '{cls}' logit through the heads' {rw} "
                                 f"outputs, on the frames: one panel per tubelet time, token rows x columns. Token "
                                 f"map total {d['total_clean']:.3f}, [CLS] itself {d['cls_self_clean']:.3f} "
                                 "(clean).")  # fmt: skip
        body += fig("dla_components", "Direct logit attribution of each residual-stream writer; the bars plus "
                                      "'bias' sum to the logit.")
        sec.append(("dla", "Direct logit attribution", body))
    if "cls_attention" in res:
        a = res["cls_attention"]
        rows = [(f"L{h['layer']}H{h['head']}", h["dla"], h["region_mass"], h["region_mass_corrupt"], h["max_weight"],
                 h["cls_self"], str(tuple(h["peak_thw"]))) for h in a["heads"]]  # fmt: skip
        body = fig("cls_attention", f"{rw} attention per token, overlaid on the middle frame of each tubelet (every "
                                    "other head: 'Explore the clips' above).")  # fmt: skip
        body += table(["head", "DLA (logits)", "region mass", "region mass (corrupt)", "max weight", "on [CLS]",
                       "peak (t, row, col)"], rows)  # fmt: skip
        body += (f"<p class='meta'>Heads ranked by {_e(a['ranking'])}. Uniform attention would put "
                 f"{a['uniform_mass']:.1%} on the region.</p>")
        rows2 = [(f"L{r['layer']}H{r['head']}", r["mass"], str(tuple(r["peak"]))) for r in a["top_by_region_mass"]]
        body += f"<h3>Heads whose {rw} attention falls most on the region</h3>" + table(
            ["head", "region mass", "peak (t, row, col)"], rows2)
        sec.append(("attention", f"{rw} attention", body))
    if "ablation" in res:
        ab = res["ablation"]
        body = fig("ablation", "Logits of the clean clip's top classes before and after ablating the region.")
        body += (f"<p class='meta'>Region ({_e(res['region']['source'])}): {_region_text(res['region'])} "
                 f"({ab['region_fraction_of_tokens']:.1%} of the tubelets).</p>")
        for key in ("pixels", "tokens"):
            rows = [(r["rank"], f"{r['label']} ({r['original']:.4f})", f"{r['ablated_top_label']} "
                     f"({r['ablated_top_logit']:.4f})", r["change"], r["ablated_rank"]) for r in ab[key]["table"]]
            body += f"<h3>Ablation of the region's {key} (Table 1 of the paper)</h3>" + table(
                ["rank", "original (logit)", "ablated (logit)", "change of this class", "its rank after"], rows,
                left=3)  # fmt: skip
        sec.append(("ablation", "Region ablation", body))
    p = res.get("patching", {})
    if "attention" in p:
        rows = [(r["layer"], r["attention"], r["mlp"], r.get("attention_norm"), r.get("mlp_norm")) for r in p["table"]]
        body = fig("recovery", "Signal recovery per layer, attention vs MLP blocks (Figure 2 of the paper).")
        body += "<h3>Signal recovery per layer (Table 2 of the paper)</h3>" + table(
            ["layer", "attention (%)", "MLP (%)", "attention, norm (%)", "MLP, norm (%)"], rows, "{:.1f}")
        norm = res.get("definitions", {}).get("recovery_norm")
        body += (f"<p class='meta'><b>Signal recovery.</b> {_e(p['formula'])}"
                 + (f" The 'norm' columns: {_e(norm)}" if norm else "") + "</p>")  # fmt: skip
        if "heads" in p:
            body += ("<h3>Per head</h3><p class='meta'>Recovery when one head's output (hook_z, every position) is "
                     f"patched. Hover a cell for its value; click it to see that head's {rw} attention on the "
                     "frames.</p>" + (view("heads") or fig("head_patching", "Per-head recovery.")))  # fmt: skip
            if views:
                body += fig("head_patching", "The same map as a figure (figures/head_patching.png).")
        sec.append(("patching", "Attention vs MLP patching", body))
    if res.get("paths"):
        body = ("<p class='meta'>Path patching with every other component frozen at its corrupt value: the effect of "
                "one sender reaching one receiver along the direct residual path (% of the signal).</p>")
        body += view("graph")
        body += fig("paths_direct", "Direct paths of every head and MLP to the final residual.")
        body += fig("paths_into_mlps", "Heads into the MLPs that recover most; hatched: unreachable (the head's "
                                       "layer comes after the MLP).")  # fmt: skip
        body += _paths_tables(res["paths"])
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
           f"{_e(inputs.get('clean'))}</code>; corrupt <code>{_e(inputs.get('corrupt'))}</code>; "
           f"{_e(meta.get('created', ''))}")  # fmt: skip
    script = interactive.data_and_script(views, [a for a, _, _ in sec]) if views else ""
    return page("vivit-lens analysis", sec, sub, script)


def check_formats(formats: Sequence[str]) -> tuple[str, ...]:
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"formats must be a non-empty subset of {FORMATS}, got {tuple(formats)}")
    return tuple(formats)


def write_outputs(results: Mapping, out_dir: str | Path, formats: Sequence[str], *, tables, html) -> dict[str, Path]:
    """The outputs `formats` asks for, into `out_dir`: results.json ("json"), `tables(results)` as csv/*.csv
    ("csv"), and `html(out_dir)` (which draws figures/*.png) as report.html ("html"). Returns what went where."""
    from vivit_lens.study.tables import write_csv

    formats = check_formats(formats)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "json" in formats:
        write_json(results, out / "results.json")
        written["results"] = out / "results.json"
    if "csv" in formats:
        written["csv"] = write_csv(tables(results), out / "csv")
    if "html" in formats:
        (out / "report.html").write_text(html(out), encoding="utf-8")
        written |= {"report": out / "report.html", "figures": out / "figures"}
    return written


def write_analysis(res: Mapping, out_dir: str | Path, frames: np.ndarray | None = None, *,
                   views: Mapping | None = None, formats: Sequence[str] = ("html", "json"),
                   progress: bool = False) -> dict[str, Path]:  # fmt: skip
    """Write one pair's analysis into `out_dir`: `report.html` (self-contained, with `views` interactive) and
    `figures/*.png` for "html", `results.json` for "json", `csv/*.csv` for "csv". Returns what went where."""
    from vivit_lens.study import plots, tables

    res = jsonable(res)
    tubelet = res.get("meta", {}).get("model", {}).get("tubelet_size")

    def html(out: Path) -> str:
        images = render_figures(plots.analysis_figures(res, frames, tubelet, progress=progress), out)
        return render_analysis(res, images, views)

    return write_outputs(res, out_dir, formats, tables=tables.analysis_tables, html=html)


def __getattr__(name: str):
    """`report.render_study` / `report.write_study` live in `study_report` (imported on first use: no cycle)."""
    if name in ("render_study", "write_study"):
        from vivit_lens.study import study_report

        return getattr(study_report, name)
    raise AttributeError(f"module 'vivit_lens.report' has no attribute {name!r}")


__all__ = ["CI", "FORMATS", "citation_html", "figure", "page", "render_analysis", "table", "write_analysis",
           "write_outputs"]  # and render_study, write_study (from study_report, above)
