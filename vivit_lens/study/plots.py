"""Figures of the analysis (matplotlib, Agg; no pyplot state): one function per figure, each returning a Figure.

    res = analysis.jsonable(analysis.analyze_pair(model, clean, corrupt))
    fig = plots.recovery(res)                  # the paper's Figure 2 / Table 2 as bars
    figs = plots.analysis_figures(res, frames) # {name: Figure} for every figure of the report

Every function reads the JSON-ready results dict of `analysis.analyze_pair` (or `analysis.study`), so
figures can be redrawn from a saved `results.json`. `frames` are uint8 `[frames height width 3]`
of the model input (`analysis.display_frames`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from vivit_lens.study.summary import readout_word

ATTN_COLOR, MLP_COLOR = "#e08214", "#2c7bb6"
DIVERGING = "RdBu_r"


def _sym_norm(values: np.ndarray) -> TwoSlopeNorm:
    v = float(np.nanmax(np.abs(values))) if np.size(values) else 1.0
    v = v if v > 0 and math.isfinite(v) else 1.0
    return TwoSlopeNorm(0.0, -v, v)


def _arr(x) -> np.ndarray:
    return np.asarray([np.nan if v is None else v for v in x] if isinstance(x, list) and x and not isinstance(x[0], list)
                      else x, dtype=float)  # fmt: skip


def _grid(x) -> np.ndarray:
    return np.asarray([[np.nan if v is None else v for v in row] for row in x], dtype=float)


def _annotate(ax, m: np.ndarray, fmt: str = "{:.0f}", fontsize: float = 8.0, vmax: float | None = None) -> None:
    """Each cell's value, white on the dark end of the colour scale (`vmax`: its end; default the map's max)."""
    if m.size > 400:
        return
    norm = vmax if vmax is not None else np.nanmax(np.abs(m)) if np.isfinite(m).any() else 1.0
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            text = fmt.format(v)
            text = text[1:] if text.startswith("-") and float(text[1:]) == 0 else text  # no "-0.0"
            ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                    color="white" if abs(v) > 0.6 * (norm or 1.0) else "black")  # fmt: skip


def _frame_label(t: int, tt: int) -> str:
    return f"frames {t * tt}-{t * tt + tt - 1}" if tt > 1 else f"frame {t}"


# Single-pair figures -------------------------------------------------------------------------------
def delta_cascade(res: Mapping) -> Figure:
    """Per-layer L2 norm of the clean - corrupt activation delta (the paper's Figure 1)."""
    c = res["delta_cascade"]
    layers = c["layers"]
    fig = Figure(figsize=(7.5, 4.3), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(layers, _arr(c["resid_post"]["token_mean"]), "o-", color="black", label="residual (block output), mean over tokens")
    ax.plot(layers, _arr(c["resid_post"]["cls"]), "s--", color="0.45",
            label=f"residual (block output), {readout_word(res)}")
    ax.plot(layers, _arr(c["attn_out"]["token_mean"]), "^-", color=ATTN_COLOR, label="attention output, mean over tokens")
    ax.plot(layers, _arr(c["mlp_out"]["token_mean"]), "v-", color=MLP_COLOR, label="MLP output, mean over tokens")
    ax.set_xticks(layers)
    ax.set_xlabel("layer")
    ax.set_ylabel("||act_clean - act_corrupt||_2  (activation units)")
    ax.set_title("Activation delta per layer (the 'amplification cascade')")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7.5, loc="best")
    return fig


def _token_panels(fig, rows: Sequence[tuple[str, np.ndarray]], frames: np.ndarray | None, tubelet: Sequence[int],
                  cmap: str, norm, max_cols: int = 8) -> tuple[np.ndarray, object]:
    """One panel per tubelet time: the middle input frame of the tubelet (dimmed) under the token map
    `[row col]`; `rows` = (title, map[t][row][col]) drawn one after another, wrapping after `max_cols` panels.
    Returns the axes grid and the last image (for a colour bar)."""
    t_len = rows[0][1].shape[0]
    cols = min(t_len, max_cols)
    per = math.ceil(t_len / cols)
    grid = fig.subplots(per * len(rows), cols, squeeze=False)
    tt, ph, pw = tubelet
    im = None
    for r, (title, m) in enumerate(rows):
        for t in range(per * cols):
            ax = grid[r * per + t // cols, t % cols]
            ax.set_xticks([])
            ax.set_yticks([])
            if t >= t_len:
                ax.set_visible(False)
                continue
            h, w = m.shape[1:]
            extent = (-0.5, w * pw - 0.5, h * ph - 0.5, -0.5)
            if frames is not None:
                frame = frames[min(t * tt + tt // 2, len(frames) - 1)].mean(-1)
                ax.imshow(frame, cmap="gray", vmin=0, vmax=255 * 1.6, interpolation="nearest",
                          extent=(-0.5, frame.shape[1] - 0.5, frame.shape[0] - 0.5, -0.5))  # fmt: skip
            im = ax.imshow(m[t], cmap=cmap, norm=norm, alpha=0.8 if frames is not None else 1.0, extent=extent,
                           interpolation="nearest")  # fmt: skip
            ax.set_xlim(extent[0], extent[1])
            ax.set_ylim(extent[2], extent[3])
            if t % cols == 0:
                ax.set_ylabel(title, fontsize=8.5)
            ax.set_title(_frame_label(t, tt), fontsize=8)
    return grid, im


def dla_heatmap(res: Mapping, frames: np.ndarray | None = None, tubelet: Sequence[int] | None = None) -> Figure:
    """Direct logit attribution per source token, drawn on the frames: one panel per tubelet time (token rows x
    columns over the tubelet's middle frame), clean and clean - corrupt, diverging colours centred at zero."""
    d = res["dla"]["tokens"]
    t, h, w = d["grid_shape"]
    tubelet = tubelet or (2, 1, 1)
    clean, diff = np.asarray(d["clean"], float).reshape(t, h, w), np.asarray(d["difference"], float).reshape(t, h, w)
    cols = min(t, 8)
    n_rows = 2 * math.ceil(t / cols)
    fig = Figure(figsize=(1.45 * cols + 1.6, 1.55 * n_rows + 0.9), layout="constrained")
    norm = _sym_norm(np.concatenate([clean.ravel(), diff.ravel()]))
    grid, im = _token_panels(fig, [("clean", clean), ("clean - corrupt", diff)], frames, tubelet, DIVERGING, norm)
    fig.colorbar(im, ax=grid.ravel().tolist(), label=f"contribution to '{res['class']['label']}' (logits)",
                 shrink=0.8, pad=0.01)  # fmt: skip
    fig.suptitle(f"Direct logit attribution per source token, through every head's {readout_word(res)} output (token "
                 "grid on the middle frame of each tubelet; 0 = white)", fontsize=9.5)  # fmt: skip
    return fig

def dla_components(res: Mapping) -> Figure:
    """Direct logit attribution of each residual writer (embeddings, attention and MLP of every layer)."""
    c = res["dla"]["components"]
    labels = c["labels"]
    x = np.arange(len(labels))
    fig = Figure(figsize=(max(7, 0.45 * len(labels) + 2), 4), layout="constrained")
    ax = fig.add_subplot()
    colors = [ATTN_COLOR if "attn" in l else MLP_COLOR if "mlp" in l else "0.5" for l in labels]
    ax.bar(x - 0.2, _arr(c["clean"]), 0.4, color=colors, label="clean")
    ax.bar(x + 0.2, _arr(c["corrupt"]), 0.4, color=colors, alpha=0.45, hatch="//", label="corrupt")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7.5)
    ax.set_ylabel(f"contribution to the '{res['class']['label']}' logit (logits)")
    ax.set_title(f"DLA per component (sums to the logit: clean {c['logit_clean']:.3f}, corrupt {c['logit_corrupt']:.3f})",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def cls_attention(res: Mapping, frames: np.ndarray, tubelet: Sequence[int], max_cols: int = 8) -> Figure:
    """[CLS] attention of the strongest heads, overlaid on the clean clip's frames (one row per head)."""
    a = res["cls_attention"]
    heads = a["heads"]
    tt, ph, pw = tubelet
    t = len(heads[0]["map_clean"]) if heads else 0
    cols = sorted(set(np.linspace(0, t - 1, min(t, max_cols)).round().astype(int).tolist())) if t else []
    box = res["region"]["box_xyxy"]
    f0, f1 = res["region"]["frames"]
    fig = Figure(figsize=(1.55 * len(cols) + 1.4, 1.75 * max(1, len(heads)) + 0.8), layout="constrained")
    grid = fig.subplots(max(1, len(heads)), max(1, len(cols)), squeeze=False)
    H, W = frames.shape[1:3]
    for i, hd in enumerate(heads):
        m = _grid_3d(hd["map_clean"])
        vmax = float(np.nanmax(m)) or 1.0
        for j, ti in enumerate(cols):
            ax = grid[i, j]
            ax.imshow(frames[min(ti * tt + tt // 2, len(frames) - 1)], interpolation="nearest")  # the tubelet's middle frame
            up = np.kron(m[ti], np.ones((ph, pw)))
            canvas = np.zeros((H, W))
            canvas[: up.shape[0], : up.shape[1]] = up[:H, :W]
            im = ax.imshow(canvas, cmap="inferno", alpha=0.6, vmin=0, vmax=vmax, interpolation="nearest")
            if ti * tt < f1 and (ti + 1) * tt > f0:
                ax.add_patch(Rectangle((box[0] - 0.5, box[1] - 0.5), box[2] - box[0], box[3] - box[1], fill=False,
                                       edgecolor="cyan", lw=1))  # fmt: skip
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(_frame_label(ti, tt), fontsize=7.5)
            if j == 0:
                ax.set_ylabel(f"L{hd['layer']}H{hd['head']}\nDLA {hd['dla']:+.3f}\nregion {hd['region_mass']:.0%}",
                              fontsize=7.5)  # fmt: skip
        fig.colorbar(im, ax=list(grid[i]), label="attention weight", shrink=0.85, pad=0.01)
    fig.suptitle(f"{readout_word(res)} attention of the heads with the largest |direct logit attribution|\n(clean "
                 "clip, middle frame of each tubelet; cyan box: outcome region)", fontsize=9.5)  # fmt: skip
    return fig


def _grid_3d(x) -> np.ndarray:
    return np.asarray(x, dtype=float)


def ablation(res: Mapping) -> Figure:
    """Top-k logits before and after ablating the outcome region (Table 1 of the paper), pixels and tokens; each
    class's change is printed under its name, clear of the bars."""
    ab = res["ablation"]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    titles = {"pixels": "region pixels set to 0 (normalised input)", "tokens": "region tokens zeroed (blocks.0 input)"}
    for ax, key in zip(axes, ("pixels", "tokens")):
        rows = ab[key]["table"]
        x = np.arange(len(rows))
        ax.bar(x - 0.2, [r["original"] for r in rows], 0.4, color="0.35", label="original")
        ax.bar(x + 0.2, [r["ablated"] for r in rows], 0.4, color="#d6604d", label="ablated")
        ax.set_xticks(x)
        ax.set_xticklabels([f"{r['label']}\n{r['change']:+.3f}" for r in rows], fontsize=8, rotation=25,
                           ha="right", rotation_mode="anchor")  # fmt: skip
        ax.set_xlabel("class (change of its logit after ablation)", fontsize=8.5)
        ax.set_title(titles[key], fontsize=10)
        ax.axhline(0, color="black", lw=0.8)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("logit")
    axes[0].legend(fontsize=8)
    reg = res["region"]
    fig.suptitle(f"Region ablation, top classes before vs after (Table 1 of the paper; region: {reg['n_tokens']} "
                 f"tokens, box x0,y0,x1,y1 = {tuple(reg['box_xyxy'])}, frames {reg['frames'][0]}-{reg['frames'][1] - 1})",
                 fontsize=10)  # fmt: skip
    return fig

def _recovery_axes(ax, layers, title: str, clean_label: str | None = None) -> None:
    """Axes of a recovery-per-layer bar chart: 0 and 100% lines, layer ticks, labels, legend."""
    ax.axhline(100, color="black", ls="--", lw=0.9, label=clean_label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(layers)
    ax.set_xlabel("layer of the patched component")
    ax.set_ylabel("signal recovered (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def recovery(res: Mapping) -> Figure:
    """Signal recovery of patching each attention block vs each MLP block (Figure 2 and Table 2 of the paper)."""
    p = res["patching"]
    layers = np.asarray(p["layers"])
    fig = Figure(figsize=(max(7, 0.7 * len(layers) + 3), 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(layers - 0.2, _arr(p["attention"]), 0.4, color=ATTN_COLOR, label="attention block (attn_out)")
    ax.bar(layers + 0.2, _arr(p["mlp"]), 0.4, color=MLP_COLOR, label="MLP block (mlp_out)")
    _recovery_axes(ax, layers, f"Patching clean -> corrupt: % of the signal at {res['signal']['hook']} "
                               f"({res['signal']['positions']}) recovered", "100% = clean run")  # fmt: skip
    return fig

def head_patching(res: Mapping) -> Figure:
    """Signal recovery of patching each head's output (hook_z, every position): a `[layer head]` map."""
    m = _grid(res["patching"]["heads"])
    fig = Figure(figsize=(max(5, 0.8 * m.shape[1] + 2.5), max(3.5, 0.6 * m.shape[0] + 1.8)), layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(m, cmap=DIVERGING, norm=_sym_norm(m), aspect="auto")
    _annotate(ax, m, "{:.1f}", fontsize=9.0 if m.shape[1] <= 8 else 7.0)
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    fig.colorbar(im, ax=ax, label="signal recovered (%)")
    ax.set_title("Per-head activation patching (head output, all positions)", fontsize=10)
    return fig

def _unreachable_map(ax, m: np.ndarray, norm: TwoSlopeNorm | None = None) -> object:
    """A `[layer head]` path map with the heads that cannot reach the receiver hatched grey, not drawn as 0."""
    cmap = colormaps[DIVERGING].with_extremes(bad="0.88")
    norm = norm or _sym_norm(m)
    im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, norm=norm, aspect="auto")
    for (l, h), v in np.ndenumerate(m):
        if not np.isfinite(v):
            ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.6", lw=0))
    _annotate(ax, m, "{:.1f}", fontsize=8.5 if m.shape[1] <= 8 else 6.5, vmax=norm.vmax)
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer of the sending head")
    return im


def paths_direct(res: Mapping) -> Figure | None:
    """Path patching, direct paths to the final residual: every head (a map) and every MLP (bars)."""
    direct = res["paths"].get("direct_to_final")
    if not direct:
        return None
    m = _grid(direct["heads"])
    fig = Figure(figsize=(10, max(3.8, 0.55 * m.shape[0] + 1.8)), layout="constrained")
    ax, bx = fig.subplots(1, 2, width_ratios=[max(m.shape[1], 3), 4])
    im = _unreachable_map(ax, m)
    ax.set_title(f"heads -> {direct['receiver']}", fontsize=10)
    fig.colorbar(im, ax=ax, label="direct effect (% of signal)", shrink=0.9)
    mlps = _arr(direct["mlps"])
    bx.barh(np.arange(len(mlps)), mlps, color=MLP_COLOR)
    bx.invert_yaxis()
    bx.set_yticks(range(len(mlps)))
    bx.set_ylabel("layer")
    bx.set_xlabel("direct effect (% of signal)")
    bx.axvline(0, color="black", lw=0.8)
    bx.grid(axis="x", alpha=0.3)
    bx.set_title(f"MLPs -> {direct['receiver']} (embeddings: {direct['embed']:.1f}%)", fontsize=10)
    fig.suptitle("Path patching (frozen): direct paths to the final residual", fontsize=10.5)
    return fig


def paths_into_mlps(res: Mapping) -> Figure | None:
    """Path patching, heads into the input of each composer MLP; a head after the MLP cannot reach it (hatched)."""
    into = res["paths"].get("into_mlps", [])
    if not into:
        return None
    n_layers = len(into[0]["heads"])
    fig = Figure(figsize=(min(4.2 * len(into), 13) + 0.8, max(3.8, 0.55 * n_layers + 1.8)), layout="constrained")
    axes = fig.subplots(1, len(into), squeeze=False)[0]
    norm = _sym_norm(np.concatenate([_grid(e["heads"]).ravel() for e in into]))  # one scale for every panel
    for ax, entry in zip(axes, into):
        im = _unreachable_map(ax, _grid(entry["heads"]), norm)
        ax.set_title(f"heads -> MLP {entry['mlp_layer']} input\n(MLP {entry['mlp_layer']} recovers "
                     f"{entry['mlp_recovery']:.1f}%)", fontsize=9.5)  # fmt: skip
    fig.colorbar(im, ax=axes.tolist(), label="path effect (% of signal)", shrink=0.9)
    fig.suptitle("Path patching (frozen): heads feeding the MLPs that recover most (hatched: the head comes after "
                 "the MLP and cannot write into its input)", fontsize=9.5)  # fmt: skip
    return fig

def attribution(res: Mapping) -> Figure:
    """Attribution patching vs exact patching: one scatter per comparison, with the y = x line."""
    at = res["attribution"]
    names = list(at)
    cols = min(3, max(1, len(names)))
    rows = math.ceil(len(names) / cols) if names else 1
    fig = Figure(figsize=(3.7 * cols + 0.5, 3.4 * rows + 0.3), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).reshape(-1)
    for ax, name in zip(axes, names):
        e = np.asarray(at[name]["exact"], dtype=float).reshape(-1)
        a = np.asarray(at[name]["attribution"], dtype=float).reshape(-1)
        ag = at[name]["agreement"]
        ax.scatter(e, a, s=14, alpha=0.75, color="#542788")
        lim = [np.nanmin([e.min(), a.min(), 0]), np.nanmax([e.max(), a.max(), 0])]
        ax.plot(lim, lim, color="0.5", lw=0.8, ls="--")
        r = ag.get("pearson")
        ax.set_title(f"{name}: r={r if r is None else f'{r:.3f}'}, top-{ag['k']} overlap {ag['topk_overlap']:.2f}",
                     fontsize=8.5)  # fmt: skip
        ax.set_xlabel("exact patching (% of signal)")
        ax.set_ylabel("attribution estimate (%)")
        ax.grid(alpha=0.3)
    for ax in axes[len(names):]:
        ax.set_visible(False)
    fig.suptitle("Attribution patching (one backward pass) vs exact patching", fontsize=10)
    return fig


def circuit(res: Mapping, top_k: int = 14):
    """The circuit graph: direct path scores on the nodes, heads -> composer MLPs and components -> final as edges."""
    from vivit_lens.interp.graph import Circuit
    from vivit_lens.interp.paths import MLP, FinalResid, Head, MLPInput

    pth = res["paths"]
    direct = pth.get("direct_to_final")
    edges = {}
    for entry in pth.get("into_mlps", []):
        m = _grid(entry["heads"])
        for (l, h), v in np.ndenumerate(m):
            if np.isfinite(v) and v != 0:
                edges[(Head(l, h), MLPInput(entry["mlp_layer"]))] = float(v)
    nodes = None
    if direct:
        heads, mlps = _grid(direct["heads"]), _arr(direct["mlps"])
        import torch

        nodes = {"heads": torch.tensor(heads), "mlps": torch.tensor(mlps)}
        for l, v in enumerate(mlps):
            edges[(MLP(l), FinalResid())] = float(v)
        for (l, h), v in np.ndenumerate(heads):
            edges[(Head(l, h), FinalResid())] = float(v)
    if not edges:
        return None
    c = Circuit.from_scores(node_scores=nodes, edge_scores=edges, top_k=top_k)
    linked = {e.source for e in c.edges} | {e.target for e in c.edges}
    c.nodes = {k: n for k, n in c.nodes.items() if k in linked}  # the strongest nodes that carry no kept path go
    return c.draw(title=f"Circuit: the {top_k} strongest paths (path patching, % of signal)")


# Whole analysis ----------------------------------------------------------------------------------
def analysis_figures(res: Mapping, frames: np.ndarray | None = None, tubelet: Sequence[int] | None = None,
                     progress: bool = False) -> dict:  # fmt: skip
    """Every figure of an analysis that the results hold: `{name: Figure}` in report order."""
    from tqdm.auto import tqdm

    tubelet = tubelet or res.get("meta", {}).get("model", {}).get("tubelet_size", (2, 1, 1))
    makers = [
        ("delta_cascade", "delta_cascade", lambda: delta_cascade(res)),
        ("dla_tokens", "dla", lambda: dla_heatmap(res, frames, tubelet)),
        ("dla_components", "dla", lambda: dla_components(res)),
        ("cls_attention", "cls_attention", lambda: cls_attention(res, frames, tubelet) if frames is not None else None),
        ("ablation", "ablation", lambda: ablation(res)),
        ("recovery", "patching", lambda: recovery(res) if "attention" in res["patching"] else None),
        ("head_patching", "patching", lambda: head_patching(res) if "heads" in res["patching"] else None),
        ("paths_direct", "paths", lambda: paths_direct(res)),
        ("paths_into_mlps", "paths", lambda: paths_into_mlps(res)),
        ("circuit", "paths", lambda: circuit(res)),
        ("attribution", "attribution", lambda: attribution(res) if res["attribution"] else None),
    ]  # fmt: skip
    out = {}
    for name, key, make in tqdm(makers, desc="figures", disable=not progress, leave=False):
        if key in res and res[key] is not None:
            fig = make()
            if fig is not None:
                out[name] = fig
    return out


# Study figures -----------------------------------------------------------------------------------
def _ci_bars(ax, x, ci: Mapping, offset: float, color: str, label: str) -> None:
    mean, lo, hi = _arr(ci["mean"]), _arr(ci["lo"]), _arr(ci["hi"])
    ax.bar(np.asarray(x) + offset, mean, 0.38, color=color, label=label, alpha=0.9)
    ax.errorbar(np.asarray(x) + offset, mean, yerr=[mean - lo, hi - mean], fmt="none", ecolor="black", capsize=2.5, lw=0.9)


def study_recovery(st: Mapping) -> Figure:
    """Attention vs MLP recovery per layer over many pairs: mean and 95% bootstrap CI, one panel per domain."""
    doms = list(st["domains"])
    fig = Figure(figsize=(5.8 * len(doms), 4.6), layout="constrained")
    axes = fig.subplots(1, len(doms), squeeze=False)[0]
    for ax, dom in zip(axes, doms):
        d = st["domains"][dom]
        x = d["layers"]
        _ci_bars(ax, x, d["ci"]["attention_recovery"], -0.2, ATTN_COLOR, "attention block")
        _ci_bars(ax, x, d["ci"]["mlp_recovery"], 0.2, MLP_COLOR, "MLP block")
        _recovery_axes(ax, x, f"{dom}: {d['n']} pairs (mean, 95% bootstrap CI)")
    return fig


def study_cascade(st: Mapping) -> Figure:
    """The activation-delta cascade over many pairs: mean and 95% CI band per layer, per domain."""
    fig = Figure(figsize=(7.5, 4.3), layout="constrained")
    ax = fig.add_subplot()
    colors = ["#1b7837", "#762a83", "#b35806", "#2166ac"]
    for i, (dom, d) in enumerate(st["domains"].items()):
        x = d["layers"]
        for key, ls, what in (("cascade_token_mean", "-", "mean over tokens"), ("cascade_cls", "--", readout_word(st))):
            ci = d["ci"][key]
            ax.plot(x, _arr(ci["mean"]), ls, marker="o", color=colors[i % 4], label=f"{dom}: {what}")
            ax.fill_between(x, _arr(ci["lo"]), _arr(ci["hi"]), color=colors[i % 4], alpha=0.15)
    ax.set_xlabel("layer")
    ax.set_ylabel("||resid_clean - resid_corrupt||_2 (activation units)")
    ax.set_title("Activation delta per layer over pairs (mean, 95% bootstrap CI)", fontsize=10)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5)
    return fig


def study_probe(st: Mapping) -> Figure:
    """Per-layer outcome probe on [CLS] per domain: grouped k-fold held-out accuracy and the shuffled-label control,
    each with its 95% bootstrap CI over pairs, and the cross-domain transfer probes."""
    doms = [d for d in st["probe"] if st["probe"][d].get("records")]
    transfer = st.get("transfer") or {}
    n = max(1, len(doms)) + (1 if transfer else 0)
    fig = Figure(figsize=(max(4.8 * n, 7.0), 4.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]

    def band(ax, rec, key, style, color, label, dx=0.0):
        x = np.array([r["layer"] for r in rec], float) + dx
        y = np.array([r[key] for r in rec])
        err = [y - np.array([r[f"{key}_lo"] for r in rec]), np.array([r[f"{key}_hi"] for r in rec]) - y]
        ax.errorbar(x, y, yerr=err, fmt=style, color=color, capsize=3, ms=5, label=label)

    for ax, dom in zip(axes, doms):
        p = st["probe"][dom]
        rec = p["records"]
        band(ax, rec, "test", "o-", "#1b7837", "outcome probe (held out)", -0.15)
        band(ax, rec, "control", "s--", "#c51b7d", "shuffled-label control (held out)", 0.15)
        ax.plot([r["layer"] for r in rec], [r["train"] for r in rec], "^:", color="0.45", ms=4,
                label="probe, training folds")
        ax.axhline(p["chance"], color="black", lw=0.8, ls="--", label=f"chance ({p['chance']:.2f})")
        ax.set_xticks([r["layer"] for r in rec])
        ax.set_title(f"{dom}: {p['n_pairs']} pairs, grouped {p['k']}-fold", fontsize=9.5)
    if transfer:
        ax = axes[-1]
        colors = ["#2166ac", "#b35806", "#762a83", "#1b7837"]
        for i, (name, rec) in enumerate(transfer.items()):
            band(ax, rec, "test", "os"[i % 2] + "-", colors[i % 4], name.replace("->", " -> "),
                 (i - (len(transfer) - 1) / 2) * 0.3)
        ax.axhline(0.5, color="black", lw=0.8, ls="--", label="chance (0.50)")
        ax.set_xticks([r["layer"] for r in next(iter(transfer.values()))])
        ax.set_title("transfer: trained on one domain, tested on the other", fontsize=9.5)
    for ax in axes:
        ax.set_ylim(-0.02, 1.05)
        ax.set_xlabel(f"layer ({readout_word(st)} residual after the block)")
        ax.set_ylabel("accuracy")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left", ncols=2, framealpha=0.85)
    fig.suptitle("Linear probes for the outcome (success vs failure),\nmean and 95% bootstrap CI over pairs",
                 fontsize=10)
    return fig


def study_heads(st: Mapping) -> Figure:
    """Mean per-head recovery over pairs, one map per domain."""
    doms = list(st["domains"])
    fig = Figure(figsize=(4.6 * len(doms) + 0.6, 4.0), layout="constrained")
    axes = fig.subplots(1, len(doms), squeeze=False)[0]
    for ax, dom in zip(axes, doms):
        m = _grid(st["domains"][dom]["ci"]["head_recovery"]["mean"])
        im = head_map(ax, m, _sym_norm(m), f"{dom}: mean per-head recovery")
        fig.colorbar(im, ax=ax, label="signal recovered (%)", shrink=0.85)
    return fig


def head_map(ax, m: np.ndarray, norm: TwoSlopeNorm, title: str):
    """A [layer head] map of recoveries (%), annotated, on `norm`; returns the image for a colour bar."""
    im = ax.imshow(m, cmap=DIVERGING, norm=norm, aspect="auto")
    _annotate(ax, m, "{:.1f}", fontsize=8.5 if m.shape[1] <= 8 else 6.5)
    ax.set_xticks(range(m.shape[1]))
    ax.set_yticks(range(m.shape[0]))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9.5)
    return im


def study_scalars(st: Mapping) -> Figure:
    """Per-pair scalars with mean and CI: the region-ablation change of the class logit and the clean - corrupt logit gap."""
    keys = [("ablation_pixels_change", "pixel ablation:\nchange of class logit"),
            ("ablation_tokens_change", "token ablation:\nchange of class logit"),
            ("class_logit_difference", "class logit\nclean - corrupt")]  # fmt: skip
    doms = list(st["domains"])
    fig = Figure(figsize=(9, 4), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / len(doms)
    colors = ["#1b7837", "#762a83", "#b35806", "#2166ac"]
    rng = np.random.default_rng(0)
    for i, dom in enumerate(doms):
        d = st["domains"][dom]
        for j, (key, _) in enumerate(keys):
            x = j + (i - (len(doms) - 1) / 2) * width
            vals = np.asarray([row[key] for row in d["per_pair"]], dtype=float)
            ax.scatter(x + rng.uniform(-width / 4, width / 4, len(vals)), vals, s=9, color=colors[i % 4], alpha=0.5)
            ci = d["ci"][key]
            ax.errorbar([x], [ci["mean"]], yerr=[[ci["mean"] - ci["lo"]], [ci["hi"] - ci["mean"]]], fmt="D",
                        color="black", mfc=colors[i % 4], capsize=4, label=dom if j == 0 else None)  # fmt: skip
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k[1] for k in keys], fontsize=8.5)
    ax.set_ylabel("logits")
    ax.set_title("Per pair (dots) and mean with 95% bootstrap CI (diamonds)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def study_figures(st: Mapping, progress: bool = False) -> dict:
    """Every figure of a study: `{name: Figure}` in report order."""
    from tqdm.auto import tqdm

    makers = {"study_recovery": study_recovery, "study_cascade": study_cascade, "study_heads": study_heads,
              "study_scalars": study_scalars}  # fmt: skip
    if any(p.get("records") for p in st["probe"].values()):
        makers["study_probe"] = study_probe
    return {name: make(st) for name, make in tqdm(makers.items(), desc="figures", disable=not progress, leave=False)}


FIGURE_DPI = 150  # the PNGs in figures/: readable when zoomed (report.FIGURE_DPI is the same)


def to_png(fig: Figure, dpi: int = FIGURE_DPI) -> bytes:
    """PNG bytes of a figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


__all__ = [
    "ablation", "analysis_figures", "attribution", "circuit", "cls_attention", "delta_cascade", "dla_components",
    "dla_heatmap", "head_patching", "paths_direct", "paths_into_mlps", "recovery", "study_cascade", "study_figures", "study_heads",
    "study_probe", "study_recovery", "study_scalars", "to_png",
]  # fmt: skip
