"""Studies side by side: the same measurements on two or more models (e.g. ViViT and VideoMAE), with their CIs.

    vivit-lens study --model tiny_vivit --out study_vivit --format html,json
    vivit-lens study --model tiny_videomae --out study_videomae --format html,json
    vivit-lens compare study_vivit study_videomae --out compare      # report.html, results.json, csv/

    cmp = compare_studies({"vivit": load_study("study_vivit"), "videomae": load_study("study_videomae")})
    write_compare(cmp, "compare/", formats=("html", "json", "csv"))

Nothing is recomputed: each model's figures are its own study's, with the N and the 95% bootstrap CIs over pairs
that study measured. The CIs are per model; models measured on different pairs are not paired, so the page shows
them side by side and draws no difference-of-means CI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vivit_lens.study.report import _e, figure, page, render_figures, table, write_outputs

Rows = list[dict[str, Any]]
COLORS = ("#2166ac", "#b35806", "#1b7837", "#762a83")


class StudyFolderError(ValueError):
    """A folder that holds no readable study results."""


def load_study(folder: str | Path) -> dict:
    """The `results.json` a `vivit-lens study --format json` run wrote into `folder`."""
    path = Path(folder) / "results.json"
    if not Path(folder).is_dir():
        raise StudyFolderError(f"{folder} is not a folder; expected the --out folder of a vivit-lens study")
    if not path.is_file():
        raise StudyFolderError(f"{folder} holds no results.json; run the study with --format json (the default "
                               f"writes it) and pass its --out folder")  # fmt: skip
    try:
        st = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StudyFolderError(f"cannot read {path}: {e}") from None
    if not isinstance(st, dict) or "domains" not in st or "probe" not in st:
        raise StudyFolderError(f"{path} is not a study's results (no 'domains' and 'probe'); is it an analyze run?")
    return st


def _model_meta(st: Mapping) -> dict:
    m = st.get("meta", {}).get("model", {})
    keys = ("name_or_path", "architecture", "readout", "n_layers", "n_heads", "d_model", "n_parameters")
    out = {k: m.get(k) for k in keys if k in m}
    signal = st.get("signal") or {}
    out["signal"] = f"layer {signal.get('layer')}, {signal.get('positions')} positions" if signal else None
    return out


def _ci3(ci: Mapping, *idx: int) -> list[float]:
    return [float(np.asarray(ci[k], float)[idx]) for k in ("mean", "lo", "hi")]


def _domain(st: Mapping, dom: str) -> dict | None:
    d, p = st["domains"].get(dom), st["probe"].get(dom)
    if d is None or "ci" not in d:
        return None
    ci = d["ci"]
    head = np.asarray(ci["head_recovery"]["mean"], float)
    hl, hh = (int(i) for i in np.unravel_index(int(np.abs(head).argmax()), head.shape))
    out = {
        "n_pairs": d["n"],
        "layers": d["layers"],
        "attention_recovery": [_ci3(ci["attention_recovery"], i) for i in range(len(d["layers"]))],
        "mlp_recovery": [_ci3(ci["mlp_recovery"], i) for i in range(len(d["layers"]))],
        "head_recovery": head.tolist(),
        "top_head": {"layer": hl, "head": hh, "recovery": _ci3(ci["head_recovery"], hl, hh)},
        "hidden": d.get("hidden"),
    }
    if p and p.get("records"):
        best = p["best"]
        out["probe"] = {
            "n_pairs": p["n_pairs"], "k": p["k"], "best_layer": p["best_layer"],
            "best": [best["test"], best["test_lo"], best["test_hi"]],
            "control": [best["control"], best["control_lo"], best["control_hi"]],
            "by_layer": [[r["layer"], r["test"], r["test_lo"], r["test_hi"], r["control"]] for r in p["records"]],
        }  # fmt: skip
    return out


def compare_studies(studies: Mapping[str, Mapping]) -> dict:
    """`{name: study results}` -> the comparison (JSON-ready): per model its architecture, per domain and model
    the probe (best layer and curve), the hidden checks, block and head recoveries, each with its N and CI."""
    if len(studies) < 2:
        raise ValueError(f"compare needs at least two studies, got {len(studies)}")
    domains = [d for d in dict.fromkeys(d for st in studies.values() for d in st["domains"])
               if sum(d in st["domains"] for st in studies.values()) >= 2]  # fmt: skip
    if not domains:
        names = {n: sorted(st["domains"]) for n, st in studies.items()}
        raise ValueError(f"the studies share no domain, so there is nothing to compare: {names}")
    out: dict[str, Any] = {
        "models": {name: _model_meta(st) for name, st in studies.items()},
        "domains": {dom: {name: _domain(st, dom) for name, st in studies.items() if dom in st["domains"]}
                    for dom in domains},
        "warnings": [f"{name}: {w}" for name, st in studies.items() for w in st.get("warnings", [])],
        "commands": {name: st.get("meta", {}).get("command") for name, st in studies.items()},
    }  # fmt: skip
    return out


# Figures ----------------------------------------------------------------------------------------
def _models(cmp: Mapping, dom: str) -> list[tuple[str, Mapping]]:
    return [(n, v) for n, v in cmp["domains"][dom].items() if v is not None]


def probe_figure(cmp: Mapping) -> Figure:
    """Held-out outcome-probe accuracy per layer, one line per model with its 95% CI, one panel per domain."""
    doms = list(cmp["domains"])
    fig = Figure(figsize=(5.2 * len(doms), 4.2), layout="constrained")
    for ax, dom in zip(fig.subplots(1, len(doms), squeeze=False)[0], doms):
        for i, (name, v) in enumerate(_models(cmp, dom)):
            if "probe" not in v:
                continue
            rec = np.asarray(v["probe"]["by_layer"], float)
            x = rec[:, 0] + (i - 0.5) * 0.12
            ax.errorbar(x, rec[:, 1], yerr=[rec[:, 1] - rec[:, 2], rec[:, 3] - rec[:, 1]], fmt="o-",
                        color=COLORS[i % 4], capsize=3, ms=5, label=f"{name} ({v['probe']['n_pairs']} pairs)")
            ax.plot(x, rec[:, 4], "s:", color=COLORS[i % 4], ms=3.5, alpha=0.7, label=f"{name}: shuffled control")
        ax.axhline(0.5, color="black", lw=0.8, ls="--")
        ax.set_ylim(0.3, 1.02)
        ax.set_xlabel("layer (residual at the readout positions, after the block)")
        ax.set_ylabel("held-out accuracy")
        ax.set_title(f"{dom}: outcome probe (grouped k-fold, 95% CI)", fontsize=9.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    return fig


def blocks_figure(cmp: Mapping) -> Figure:
    """Attention and MLP block recovery per layer, per model, with 95% CIs; one row per domain."""
    doms = list(cmp["domains"])
    fig = Figure(figsize=(11.0, 3.8 * len(doms)), layout="constrained")
    axes = fig.subplots(len(doms), 2, squeeze=False)
    for row, dom in zip(axes, doms):
        models = _models(cmp, dom)
        width = 0.8 / max(1, len(models))
        for ax, key, what in ((row[0], "attention_recovery", "attention blocks"), (row[1], "mlp_recovery", "MLP blocks")):
            for i, (name, v) in enumerate(models):
                m = np.asarray(v[key], float)
                x = np.asarray(v["layers"], float) + (i - (len(models) - 1) / 2) * width
                ax.bar(x, m[:, 0], width, color=COLORS[i % 4], alpha=0.9, label=f"{name} ({v['n_pairs']} pairs)")
                ax.errorbar(x, m[:, 0], yerr=[m[:, 0] - m[:, 1], m[:, 2] - m[:, 0]], fmt="none", ecolor="black",
                            capsize=2, lw=0.8)
            ax.axhline(0, color="black", lw=0.6)
            ax.set_xlabel("layer")
            ax.set_ylabel("signal recovered (%)")
            ax.set_title(f"{dom}: {what} (mean, 95% CI)", fontsize=9.5)
            ax.grid(alpha=0.3, axis="y")
            ax.legend(fontsize=7)
    return fig


def heads_figure(cmp: Mapping) -> Figure:
    """Mean per-head recovery maps, one per domain and model, on one colour scale per domain."""
    from vivit_lens.study.plots import _sym_norm, head_map

    doms = list(cmp["domains"])
    n_models = max(len(_models(cmp, d)) for d in doms)
    fig = Figure(figsize=(4.4 * n_models + 0.8, 3.7 * len(doms)), layout="constrained")
    axes = fig.subplots(len(doms), n_models, squeeze=False)
    for row, dom in zip(axes, doms):
        models = _models(cmp, dom)
        norm = _sym_norm(np.concatenate([np.asarray(v["head_recovery"], float).ravel() for _, v in models]))
        for ax, (name, v) in zip(row, models):
            im = head_map(ax, np.asarray(v["head_recovery"], float), norm, f"{dom}, {name}: per-head recovery (%)")
        for ax in row[len(models):]:
            ax.axis("off")
        fig.colorbar(im, ax=list(row), label="signal recovered (%)", shrink=0.85)
    return fig


def compare_figures(cmp: Mapping) -> dict[str, Figure]:
    return {"compare_probe": probe_figure(cmp), "compare_blocks": blocks_figure(cmp), "compare_heads": heads_figure(cmp)}


# Tables and page --------------------------------------------------------------------------------
def _fmt(ci, fmt: str = "{:.1f}") -> str:
    """`mean [lo, hi]` of a (mean, lo, hi) sequence or array."""
    if ci is None:
        return "-"
    ci = [float(v) for v in ci]
    return f"{fmt.format(ci[0])} [{fmt.format(ci[1])}, {fmt.format(ci[2])}]"


def compare_tables(cmp: Mapping) -> dict[str, Rows]:
    """Tidy tables: probe accuracy and block recovery per domain, model and layer."""
    probe: Rows = []
    blocks: Rows = []
    for dom, models in cmp["domains"].items():
        for name, v in models.items():
            if v is None:
                continue
            for layer, test, lo, hi, control in v.get("probe", {}).get("by_layer", []):
                probe.append({"domain": dom, "model": name, "layer": int(layer), "accuracy": test, "lo": lo, "hi": hi,
                              "control": control, "n_pairs": v["probe"]["n_pairs"]})  # fmt: skip
            for key in ("attention_recovery", "mlp_recovery"):
                for layer, (m, lo, hi) in zip(v["layers"], v[key]):
                    blocks.append({"domain": dom, "model": name, "block": key.split("_")[0], "layer": layer,
                                   "recovery": m, "lo": lo, "hi": hi, "n_pairs": v["n_pairs"]})  # fmt: skip
    return {"probe": probe, "blocks": blocks}


def _summary_rows(cmp: Mapping) -> list[list[Any]]:
    rows = []
    for dom, models in cmp["domains"].items():
        for name, v in models.items():
            if v is None:
                continue
            p, h = v.get("probe"), v.get("hidden") or {}
            att = np.asarray(v["attention_recovery"], float)
            mlp = np.asarray(v["mlp_recovery"], float)
            la, lm = int(att[:, 0].argmax()), int(mlp[:, 0].argmax())
            hidden = h.get("same_top1_fraction")
            rows.append([
                dom, name, v["n_pairs"], "-" if hidden is None else f"{hidden:.3f} [{h['same_top1_ci'][0]:.3f}, "
                f"{h['same_top1_ci'][1]:.3f}] ({h['n_pairs']} pairs)",
                "-" if p is None else f"L{p['best_layer']}: {_fmt(p['best'], '{:.3f}')} ({p['n_pairs']} pairs)",
                "-" if p is None else _fmt(p["control"], "{:.3f}"),
                f"L{la}: {_fmt(att[la])}", f"L{lm}: {_fmt(mlp[lm])}",
                f"L{v['top_head']['layer']}H{v['top_head']['head']}: {_fmt(v['top_head']['recovery'])}",
            ])  # fmt: skip
    return rows


def render_compare(cmp: Mapping, images: Mapping[str, bytes]) -> str:
    models = cmp["models"]
    model_rows = [[name, m.get("architecture", "?"), m.get("name_or_path", "?"), m.get("readout", "?"),
                   m.get("signal") or "?", m.get("n_layers", "-"), m.get("n_heads", "-"), m.get("n_parameters", "-")]
                  for name, m in models.items()]  # fmt: skip
    summary = table(["domain", "model", "patched pairs", "same top-1 on both clips [95% CI]",
                     "probe, best layer [95% CI]",
                     "shuffled control", "strongest attention block (%)", "strongest MLP block (%)",
                     "strongest head (%)"], _summary_rows(cmp), left=9)  # fmt: skip
    warn = "".join(f"<li>{_e(w)}</li>" for w in cmp.get("warnings", []))
    sections = [
        ("models", "Models", table(["name", "architecture", "checkpoint", "readout", "patching signal read at",
                                    "layers", "heads", "parameters"], model_rows, "{:.0f}", left=5)
         + "<p>Recovery is measured where each model's classifier reads: a model that reads one token and one that "
           "reads the mean over all tokens give the same words different quantities (a late block patched at every "
           "position moves a mean readout directly), so compare the shapes with that in mind.</p>"),  # fmt: skip
        ("summary", "Side by side",
         "<p>Each figure is the model's own study: its N, its 95% bootstrap CI over its pairs. Recovery is the share "
         "of the corrupt-to-clean signal that patching one block (or head) restores.</p>" + summary
         + (f"<p>Warnings from the studies:</p><ul>{warn}</ul>" if warn else "")),
        ("probe", "Outcome probes", figure(images["compare_probe"], "Held-out outcome probe per layer, per model.",
                                           "probe curves of the models")),  # fmt: skip
        ("blocks", "Attention and MLP blocks", figure(images["compare_blocks"], "Block recovery per layer, per model.",
                                                      "block recoveries of the models")),  # fmt: skip
        ("heads", "Heads", figure(images["compare_heads"], "Mean per-head recovery; one colour scale per domain.",
                                  "head maps of the models")),  # fmt: skip
        ("commands", "Commands", "<ul>" + "".join(f"<li>{_e(n)}: <code>{_e(' '.join(c or []))}</code></li>"
                                                  for n, c in cmp.get("commands", {}).items()) + "</ul>"),
    ]
    return page("vivit-lens compare", sections, " vs ".join(_e(n) for n in models))


def write_compare(cmp: Mapping, out_dir: str | Path, *, formats: Sequence[str] = ("html", "json")) -> dict[str, Path]:
    """Write the comparison into `out_dir`: report.html and figures/ ("html"), results.json ("json"), csv/ ("csv")."""

    def html(out: Path) -> str:
        return render_compare(cmp, render_figures(compare_figures(cmp), out))

    return write_outputs(cmp, out_dir, formats, tables=compare_tables, html=html)


__all__ = ["StudyFolderError", "compare_studies", "compare_tables", "load_study", "render_compare", "write_compare"]
