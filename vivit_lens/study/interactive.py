"""The interactive views of the HTML reports: compact data for them, and the markup and script that show it.

    views = analysis_views(model, pair.clean, pair.corrupt, res)       # or study_views(st) for a study
    html = views_html(("scrubber", "heads", "graph"))                  # the markup of the views, in a page
    html += data_and_script(views, sections)                           # then their data and the script

Everything is embedded in the report (no network): frames as PNG or JPEG data URIs, [CLS] attention and the
clean - corrupt delta as uint8 maps with one scale per map (base64), everything else as JSON rounded to 4
significant digits. The script is `assets/report/report.js`, plain JavaScript with no library.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Mapping
from importlib import resources
from typing import Any

import numpy as np
import torch
from jaxtyping import UInt8

SIG_DIGITS = 4
LUT_SIZE = 64
SEQUENTIAL, DIVERGING = "inferno", "RdBu_r"


def rounded(x: Any, digits: int = SIG_DIGITS) -> Any:
    """A copy of nested lists / dicts of floats with `digits` significant digits (None for NaN / inf / None)."""
    if isinstance(x, Mapping):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    if isinstance(x, (np.ndarray, torch.Tensor)):
        return rounded(np.asarray(x, dtype=float).tolist(), digits)
    if isinstance(x, (float, np.floating)):
        if not math.isfinite(x):
            return None
        return float(f"{float(x):.{digits}g}")
    return x


def quantized(values: np.ndarray, axes: int) -> dict:
    """uint8 codes of non-negative `values`, one scale (the max) per index of the first `axes` axes:
    `{"shape", "scale", "data"}` with data = base64 of the codes in C order; value = code / 255 * scale."""
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0).clip(min=0)
    scale = v.reshape(*v.shape[:axes], -1).max(-1)
    safe = np.where(scale > 0, scale, 1.0).reshape(*scale.shape, *([1] * (v.ndim - axes)))
    codes = np.round(v / safe * 255).astype(np.uint8)
    return {"shape": list(v.shape), "scale": rounded(scale), "data": base64.b64encode(codes.tobytes()).decode()}


def image_uri(frame: UInt8[np.ndarray, "height width 3"]) -> str:
    """The smaller of a PNG and a JPEG (quality 90) data URI of one frame."""
    from PIL import Image

    img = Image.fromarray(frame)
    best = ""
    for fmt, mime, opts in (("PNG", "png", {"optimize": True}), ("JPEG", "jpeg", {"quality": 90})):
        buf = io.BytesIO()
        img.save(buf, format=fmt, **opts)
        uri = f"data:image/{mime};base64,{base64.b64encode(buf.getvalue()).decode()}"
        best = uri if not best or len(uri) < len(best) else best
    return best


def colormap_lut(name: str, n: int = LUT_SIZE) -> list[list[int]]:
    """`n` RGB colours of a matplotlib colour map (the same perceptual maps as the figures)."""
    from matplotlib import colormaps

    rgba = colormaps[name](np.linspace(0, 1, n))
    return np.round(rgba[:, :3] * 255).astype(int).tolist()


def analysis_views(model, clean: torch.Tensor, corrupt: torch.Tensor, res: Mapping, processor=None) -> dict:
    """The data of the analysis report's views: both clips' frames, readout attention of every head, the
    clean - corrupt residual delta per token after every block, DLA per token and the patching results."""
    from vivit_lens.study.analysis import display_frames
    from vivit_lens.interp.measure import cls_attention
    from vivit_lens.study.summary import readout_word

    cfg = model.cfg
    with torch.no_grad():
        attn = np.stack([cls_attention(model, x).values.double().numpy() for x in (clean, corrupt)])  # c l h t r w
        names = [f"blocks.{l}.hook_resid_post" for l in range(cfg.n_layers)]
        _, cc = model.run_with_cache(clean, names_filter=names)
        _, cr = model.run_with_cache(corrupt, names_filter=names)
        delta = torch.stack([(cc[n] - cr[n])[0].double().norm(dim=-1) for n in names])  # [layer pos]
        delta = model.grid.to_grid(delta).numpy()
    frames = {k: [image_uri(f) for f in display_frames(x, processor or model.processor)]
              for k, x in (("clean", clean), ("corrupt", corrupt))}  # fmt: skip
    return {
        "kind": "analysis", "readout": readout_word(res), "grid": list(cfg.grid_shape), "tubelet": list(cfg.tubelet_size),
        "image": list(cfg.image_size), "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "frames": frames,
        "attention": {"clean": quantized(attn[0], 2), "corrupt": quantized(attn[1], 2)},
        "delta": quantized(delta, 1), **_result_views(res),
        "cmaps": {"seq": colormap_lut(SEQUENTIAL), "div": colormap_lut(DIVERGING)},
    }  # fmt: skip


def _result_views(res: Mapping) -> dict:
    """The parts of an analysis' results the views show (rounded), and the sections they sit in."""
    region = res.get("region") or {"box_xyxy": [0, 0, 0, 0], "frames": [0, 0]}  # no region: no box drawn
    out: dict[str, Any] = {"label": res.get("class", {}).get("label", ""),
                           "region": {"box": region["box_xyxy"], "frames": region["frames"]}}
    if "dla" in res:
        d = res["dla"]["tokens"]
        out["dla"] = rounded({k: d[k] for k in ("clean", "corrupt", "difference")})
        out["dla_heads"] = rounded(res["dla"]["heads"]["clean"])
    p = res.get("patching", {})
    if "heads" in p:
        out["heads"] = rounded(p["heads"])
    pth = res.get("paths") or {}
    if pth:
        direct = pth.get("direct_to_final")
        out["paths"] = rounded({
            "direct": None if not direct else {"receiver": direct["receiver"], "heads": direct["heads"],
                                               "mlps": direct["mlps"], "embed": direct["embed"]},
            "into": [{"mlp": e["mlp_layer"], "recovery": e["mlp_recovery"], "heads": e["heads"]}
                     for e in pth.get("into_mlps", [])],
        })  # fmt: skip
    return out


STUDY_QUANTITIES = {  # per-pair quantity -> (label, axes after the pair: "layer", "layer head" or "")
    "attention_recovery": ("attention block recovery (%)", "layer"),
    "mlp_recovery": ("MLP block recovery (%)", "layer"),
    "head_recovery": ("head recovery (%)", "layer head"),
    "cascade_token_mean": ("activation delta, mean over tokens", "layer"),
    "cascade_cls": ("activation delta at [CLS]", "layer"),
    "region_mass_ratio": ("readout ([CLS]) attention on the region / uniform share", "layer head"),
    "ablation_pixels_change": ("pixel ablation: change of the class logit", ""),
    "ablation_tokens_change": ("token ablation: change of the class logit", ""),
    "class_logit_difference": ("class logit, clean - corrupt", ""),
}


def study_views(st: Mapping) -> dict:
    """The data of the study report's per-pair explorer: every pair's value behind every mean and CI."""
    doms = {}
    for dom, d in st["domains"].items():
        if "per_pair" not in d:
            continue
        q = {}
        for key, (label, axes) in STUDY_QUANTITIES.items():
            if key in d["per_pair"][0] and key in d["ci"]:
                ci = d["ci"][key]
                q[key] = {"label": label, "axes": axes, "values": rounded([r[key] for r in d["per_pair"]]),
                          "mean": rounded(ci["mean"]), "lo": rounded(ci["lo"]), "hi": rounded(ci["hi"])}  # fmt: skip
        doms[dom] = {"pairs": [r["pair"] for r in d["per_pair"]], "quantities": q}
    return {"kind": "study", "domains": doms}


def _script() -> str:
    return resources.files("vivit_lens").joinpath("assets/report/report.js").read_text(encoding="utf-8")


SCRUBBER = """<div class='vl-view' id='vl-scrubber'><div class='vl-controls'>
<label>frame <input type='range' id='vl-frame' min='0' value='0'></label> <span id='vl-frame-label'></span>
<button type='button' id='vl-play'>play</button>
<label>overlay <select id='vl-overlay'><option value='attention'>[CLS] attention of a head</option>
<option value='dla'>DLA per token</option><option value='delta'>clean - corrupt delta at a layer</option>
<option value='none'>none</option></select></label>
<label>layer <select id='vl-layer'></select></label> <label id='vl-head-box'>head <select id='vl-head'></select></label>
<label>opacity <input type='range' id='vl-alpha' min='0' max='100' value='65'></label></div>
<div class='vl-clips'><figure><canvas id='vl-canvas-clean'></canvas><figcaption>clean</figcaption></figure>
<figure><canvas id='vl-canvas-corrupt'></canvas><figcaption>corrupt</figcaption></figure>
<div class='vl-side'><canvas id='vl-colorbar' width='260' height='14'></canvas><div id='vl-cbar-label' class='meta'></div>
<div id='vl-readout' class='vl-readout'>hover a token to read its value</div></div></div></div>"""
HEADS = """<div class='vl-view' id='vl-heads'><div class='vl-row'><div><svg id='vl-headmap'></svg>
<div id='vl-head-readout' class='vl-readout'>hover a cell: its recovery; click: that head's [CLS] attention</div>
</div><div><div id='vl-head-title' class='meta'></div><div id='vl-head-frames'></div></div></div></div>"""
GRAPH = """<div class='vl-view' id='vl-graph'><div class='vl-controls'><label>paths shown
<input type='number' id='vl-graph-k' min='1' max='60' value='16'></label></div><svg id='vl-pathgraph'></svg>
<div id='vl-graph-readout' class='vl-readout'>hover a node or an edge: its value; click a head: its [CLS] attention
(shown under the head map)</div></div>"""
EXPLORER = """<div class='vl-view' id='vl-explorer'><div class='vl-controls'>
<label>domain <select id='vl-x-domain'></select></label> <label>quantity <select id='vl-x-quantity'></select></label>
<label id='vl-x-layer-box'>layer <select id='vl-x-layer'></select></label>
<label id='vl-x-head-box'>head <select id='vl-x-head'></select></label></div>
<div class='vl-row'><svg id='vl-x-strip'></svg><div id='vl-x-readout' class='vl-readout'></div></div>
<div class='vl-scroll'><table id='vl-x-table'></table></div></div>"""
CSS = """
.vl-view{border:1px solid #ddd;border-radius:4px;padding:10px;margin:.6em 0 1.2em 0;background:#fcfcfc}
.vl-controls{display:flex;flex-wrap:wrap;gap:6px 14px;align-items:center;font-size:.9em;margin-bottom:8px}
.vl-clips,.vl-row{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}.vl-clips figure{margin:0}
.vl-clips canvas{border:1px solid #ccc;image-rendering:pixelated}.vl-readout{font-size:.88em;margin-top:6px;
min-height:1.3em;font-family:ui-monospace,Menlo,Consolas,monospace}.vl-side{min-width:270px}
#vl-head-frames canvas{margin:0 3px 3px 0;border:1px solid #ccc;image-rendering:pixelated}
svg text{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif}.vl-scroll{max-height:260px;overflow:auto}
#vl-x-table tr.sel td{background:#ffe9a8}#vl-x-table tr{cursor:pointer}svg .vl-hit{cursor:pointer}
"""


def views_html(parts: tuple[str, ...], readout: str = "[CLS]") -> str:
    """The markup of the views named in `parts` ("scrubber", "heads", "graph": analysis; "explorer": study);
    `readout` names the attention row shown (`summary.readout_word`: "[CLS]", or a VideoMAE's token mean)."""
    blocks = {"scrubber": SCRUBBER, "heads": HEADS, "graph": GRAPH, "explorer": EXPLORER}
    return "".join(blocks[p] for p in parts).replace("[CLS] attention", f"{html.escape(readout)} attention")


def data_and_script(views: Mapping, sections: list[str]) -> str:
    """The embedded data (frames as hidden images, so the page's load waits for them; the rest as JSON in a
    non-executed script element) and the script that draws every view."""
    frames = views.get("frames", {})
    data = json.dumps({**{k: v for k, v in views.items() if k != "frames"}, "sections": sections},
                      separators=(",", ":"), allow_nan=False)  # fmt: skip
    data = data.replace("</", "<\\/")  # never closes the element early
    imgs = "".join(f"<img alt='{clip} frame {i}' data-clip='{clip}' src='{uri}'>"
                   for clip, uris in frames.items() for i, uri in enumerate(uris))  # fmt: skip
    return (f"<div id='vl-frames' hidden>{imgs}</div><script type='application/json' id='vl-data'>{data}</script>"
            f"<script>{_script()}</script>")


__all__ = ["CSS", "STUDY_QUANTITIES", "analysis_views", "colormap_lut", "data_and_script", "image_uri",
           "quantized", "rounded", "study_views", "views_html"]
