"""`analyze_pair`: the paper's analysis of one clean / corrupt pair, step by step (see `vivit_lens.analysis`).

    res = analyze_pair(model, pair.clean, pair.corrupt, region=pair.region)   # a JSON-ready dict of every number
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from vivit_lens.study.pairs import PairError, Region, region_from_difference
from vivit_lens.study.results import RECOVERY_FORMULA, _list, jsonable

STEPS = ("predictions", "cascade", "dla", "attention", "ablation", "patching", "heads", "paths", "attribution")
STUDY_STEPS = ("predictions", "cascade", "dla", "attention", "ablation", "patching", "heads")


def _topk(logits: Tensor, labels: Mapping[int, str], k: int) -> list[dict]:
    probs = logits.double().softmax(-1)[0]
    values, idx = logits[0].double().topk(min(k, logits.shape[-1]))
    return [{"rank": r + 1, "class_id": int(i), "label": labels.get(int(i), str(int(i))), "logit": float(v),
             "prob": float(probs[i])} for r, (v, i) in enumerate(zip(values, idx))]  # fmt: skip


def _signal_positions(model, which: str) -> tuple[int, ...]:
    """`"cls"` (the [CLS] token; a model without one: a ValueError naming the others), `"readout"` (the
    positions the classifier reads) or `"all"`."""
    if which == "cls" and model.grid.cls is not None:
        return (model.grid.cls,)
    if which == "readout":
        return tuple(model.readout_positions)
    if which == "all":
        return tuple(range(model.cfg.n_pos))
    no_cls = f" ({type(model).__name__} has no [CLS] token)" if which == "cls" else ""
    raise ValueError(f"signal_positions must be 'cls', 'readout' or 'all'{no_cls}, got {which!r}")


def _cache_names(n_layers: int, readout_norm: str = "ln_final") -> list[str]:
    names = ["hook_embed", "hook_pos_embed", f"{readout_norm}.hook_scale"]
    per_layer = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                 "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")  # fmt: skip
    return names + [f"blocks.{l}.{n}" for l in range(n_layers) for n in per_layer]


class _Steps:
    """Progress over the analysis steps, with the wall time of each."""

    def __init__(self, steps: Sequence[str], progress: bool, desc: str):
        self.bar = tqdm(total=len(steps), desc=desc, disable=not progress, leave=False)
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> _Step:
        return _Step(self, name)

    def close(self) -> None:
        self.bar.close()


class _Step:
    def __init__(self, steps: _Steps, name: str):
        self.steps, self.name = steps, name

    def __enter__(self) -> None:
        self.steps.bar.set_postfix_str(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.steps.times[self.name] = time.perf_counter() - self.t0
        self.steps.bar.update(1)


# The analysis of one pair -------------------------------------------------------------------------
def analyze_pair(
    model,
    clean: Tensor,
    corrupt: Tensor,
    *,
    label: int | str | None = None,
    region: Region | None = None,
    signal_layer: int | None = None,
    signal_positions: str = "readout",
    top_heads: int = 4,
    n_composers: int = 3,
    k: int = 5,
    steps: Sequence[str] = STEPS,
    norm_recovery: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Every measurement of the paper on one pair; returns a JSON-ready dict (see the module docstring).

    `clean`, `corrupt`: pixel values `[1 frames channels height width]`. `label`: the class for the
    logit measurements (name or index; default: the model's top prediction on the clean clip).
    `region`: the outcome region for ablation and attention mass (default: the tokens whose
    embeddings differ most). `signal_layer`: where the patching signal is read (default: the last
    block's output); `signal_positions`: `"readout"` (the positions the classifier reads,
    default: [CLS] on ViViT, every token on a mean-pooling VideoMAE), `"cls"` (a model without one: a
    ValueError) or `"all"` tokens.
    `top_heads`: heads shown with [CLS] attention; `n_composers`: MLPs whose head inputs are path-patched.
    `steps`: a subset of `STEPS` (patching is needed by heads, paths and attribution). `norm_recovery`: also
    score the block patching with the direction-blind norm variant (two more sweeps).
    """
    from vivit_lens.interp.metrics import SignalRecovery

    cfg = model.cfg
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; expected a subset of {STEPS}")
    for name, x in (("clean", clean), ("corrupt", corrupt)):
        model._check_pixels(x)
        if x.shape[0] != 1:
            raise ValueError(f"{name} must be one clip (batch 1), got batch {x.shape[0]}")
    s = cfg.n_layers - 1 if signal_layer is None else int(signal_layer)
    if not 0 <= s < cfg.n_layers:
        raise ValueError(f"signal_layer must be in [0, {cfg.n_layers}), got {signal_layer}")
    signal_pos = _signal_positions(model, signal_positions)
    signal_hook = f"blocks.{s}.hook_resid_post"
    res: dict[str, Any] = {"signal": {"layer": s, "hook": signal_hook, "positions": signal_positions}}

    bar = _Steps(["forward", *steps], progress, "analyze")
    with bar("forward"), torch.no_grad():
        names = _cache_names(cfg.n_layers, model.readout_norm_name)
        logits_c, cache_c = model.run_with_cache(clean, names_filter=names)
        logits_r, cache_r = model.run_with_cache(corrupt, names_filter=names)
    cls = int(logits_c[0].argmax()) if label is None else (
        label if isinstance(label, int) else model.label_id(label))
    if not 0 <= cls < cfg.n_classes:
        raise ValueError(f"class index {cls} is out of range for {cfg.n_classes} classes")
    if region is None:
        region = region_from_difference(model, clean, corrupt)
    res["class"] = {"id": cls, "label": cfg.id2label.get(cls, str(cls)), "source": "given" if label is not None
                    else "top prediction on the clean clip"}  # fmt: skip
    res["region"] = region.to_dict()

    if "predictions" in steps:
        with bar("predictions"):
            res["predictions"] = {
                "clean": _topk(logits_c, cfg.id2label, k), "corrupt": _topk(logits_r, cfg.id2label, k),
                "class_logit": {"clean": float(logits_c[0, cls]), "corrupt": float(logits_r[0, cls])},
                "same_top1": int(logits_c[0].argmax()) == int(logits_r[0].argmax()),
            }  # fmt: skip
    if "cascade" in steps:
        with bar("cascade"):
            res["delta_cascade"] = _cascade(cache_c, cache_r, cfg.n_layers)
    if "dla" in steps:
        with bar("dla"):
            res["dla"] = _dla(model, cache_c, cache_r, cls, logits_c, logits_r)
    if "attention" in steps:
        with bar("attention"):
            res["cls_attention"] = _attention(model, cache_c, cache_r, cls, region, top_heads)
    if "ablation" in steps:
        with bar("ablation"):
            res["ablation"] = _ablation(model, clean, logits_c, region, cls, k)

    need_patch = {"patching", "heads", "paths", "attribution"} & set(steps)
    metric = None
    if need_patch:
        try:
            metric = SignalRecovery.from_caches(cache_c, cache_r, signal_hook, signal_pos)
        except ValueError as e:
            raise PairError(f"no signal to recover: {e}") from None
        res["patching"] = {"formula": RECOVERY_FORMULA.format(hook=signal_hook, positions=signal_positions),
                           "layers": list(range(s + 1))}  # fmt: skip
    opts = dict(batch_size=batch_size, progress=False)  # one bar on screen: the steps bar names the sweep it is in
    if "patching" in steps:
        with bar("patching"):
            res["patching"].update(_block_patching(model, corrupt, cache_c, cache_r, metric, s, signal_pos, norm_recovery,
                                                  opts))
    if "heads" in steps:
        with bar("heads"):
            from vivit_lens.interp.patching import get_act_patch_attn_head_out_all_pos

            heads = get_act_patch_attn_head_out_all_pos(model, corrupt, cache_c, metric, layers=range(s + 1), **opts)
            res["patching"]["heads"] = _list(heads)
    if "paths" in steps:
        with bar("paths"):
            res["paths"] = _paths(model, clean, corrupt, metric, res, s, n_composers, opts)
    if "attribution" in steps:
        with bar("attribution"):
            res["attribution"] = _attribution(model, clean, corrupt, metric, res, s)
    bar.close()
    res["timings_s"] = dict(bar.times)
    return res


def _cascade(cache_c, cache_r, n_layers: int) -> dict:
    from vivit_lens.interp.measure import DELTA_HOOKS, delta_norms

    norms = delta_norms(cache_c, cache_r, layers=list(range(n_layers)))
    out: dict[str, Any] = {"layers": list(range(n_layers)), "hooks": list(DELTA_HOOKS)}
    for i, hook in enumerate(norms.labels[0]):
        out[hook] = {"token_mean": _list(norms.values[i, :, 1]), "cls": _list(norms.values[i, :, 0])}
    tm = norms.values[list(norms.labels[0]).index("resid_post"), :, 1].double()
    out["resid_post"]["growth_vs_layer0"] = _list(tm / tm[0]) if float(tm[0]) > 0 else None
    e = (cache_c["hook_embed"] - cache_r["hook_embed"]).double().norm(dim=-1)
    readout = list(cache_c.cfg.readout_positions)
    out["embed"] = {"token_mean": float(e.mean()), "cls": float(e[:, readout].mean())}
    return out


def _dla(model, cache_c, cache_r, cls: int, logits_c: Tensor, logits_r: Tensor) -> dict:
    cfg = model.cfg
    out: dict[str, Any] = {"class_id": cls}
    comp_c, labels = cache_c.dla_components(cls, model=model)
    comp_r, _ = cache_r.dla_components(cls, model=model)
    out["components"] = {"labels": labels, "clean": _list(comp_c[:, 0]), "corrupt": _list(comp_r[:, 0]),
                         "sum_clean": float(comp_c[:, 0].sum()), "logit_clean": float(logits_c[0, cls]),
                         "sum_corrupt": float(comp_r[:, 0].sum()), "logit_corrupt": float(logits_r[0, cls])}  # fmt: skip
    out["heads"] = {"clean": _list(cache_c.dla_heads(cls, model=model)[..., 0]),
                    "corrupt": _list(cache_r.dla_heads(cls, model=model)[..., 0])}  # fmt: skip
    t, h, w = cfg.grid_shape
    maps, cls_self = {}, {}
    for name, cache in (("clean", cache_c), ("corrupt", cache_r)):
        per_pos = cache.dla_tokens(cls, model=model)[:, :, 0].sum((0, 1))  # [pos]
        maps[name] = model.grid.to_grid(per_pos).reshape(t, h, w)
        cls_self[name] = float(per_pos[model.grid.cls]) if model.grid.cls is not None else 0.0
    out["tokens"] = {
        "grid_shape": [t, h, w], "clean": _list(maps["clean"]), "corrupt": _list(maps["corrupt"]),
        "difference": _list(maps["clean"] - maps["corrupt"]),
        "per_frame_clean": _list(maps["clean"].sum((1, 2))), "per_frame_corrupt": _list(maps["corrupt"].sum((1, 2))),
        "cls_self_clean": cls_self["clean"], "cls_self_corrupt": cls_self["corrupt"],
        "total_clean": float(maps["clean"].sum()),
    }  # fmt: skip
    return out


def _attention(model, cache_c, cache_r, cls: int, region: Region, top_heads: int) -> dict:
    from vivit_lens.interp.measure import cls_attention, top_heads_by_cls_attention

    cfg = model.cfg
    attn_c, attn_r = cls_attention(cache_c), cls_attention(cache_r)
    dla = cache_c.dla_heads(cls, model=model)[..., 0]  # [layer head]
    order = torch.argsort(dla.abs().reshape(-1), descending=True, stable=True)[: min(top_heads, dla.numel())]
    idx = torch.tensor(region.positions) - model.grid.first
    flat_c = attn_c.values.reshape(cfg.n_layers, cfg.n_heads, -1)
    flat_r = attn_r.values.reshape(cfg.n_layers, cfg.n_heads, -1)
    mass = flat_c[..., idx].sum(-1)
    heads = []
    t, h, w = cfg.grid_shape
    for o in order.tolist():
        l, hd = divmod(o, cfg.n_heads)
        peak = np.unravel_index(int(flat_c[l, hd].argmax()), (t, h, w))
        heads.append({"layer": l, "head": hd, "dla": float(dla[l, hd]), "region_mass": float(mass[l, hd]),
                      "region_mass_corrupt": float(flat_r[l, hd, idx].sum()), "max_weight": float(flat_c[l, hd].max()),
                      "cls_self": float(attn_c.meta["cls_self"][l, hd]),
                      "peak_thw": [int(i) for i in peak],
                      "map_clean": _list(attn_c.values[l, hd]), "map_corrupt": _list(attn_r.values[l, hd])})  # fmt: skip
    by_region = top_heads_by_cls_attention(attn_c, torch.tensor(region.positions), k=min(10, dla.numel()))
    uniform = len(region.positions) / cfg.n_pos
    best = int(mass.reshape(-1).argmax())
    return {"ranking": "|direct logit attribution| of the head on the clean clip", "heads": heads,
            "region_mass": _list(mass), "uniform_mass": uniform, "region_mass_ratio": _list(mass / uniform),
            "best_region_head": {"layer": best // cfg.n_heads, "head": best % cfg.n_heads,
                                 "region_mass": float(mass.reshape(-1)[best]),
                                 "ratio_to_uniform": float(mass.reshape(-1)[best] / uniform)},
            "top_by_region_mass": [{**r, "peak": list(r["peak"])} for r in by_region]}  # fmt: skip


def _ablation(model, clean: Tensor, logits_c: Tensor, region: Region, cls: int, k: int) -> dict:
    from vivit_lens.interp.ablation import Ablation, ablate, mask_pixels, topk_table

    rows = min(k + 1, model.cfg.n_classes)
    with torch.no_grad():
        masked = mask_pixels(clean, frames=range(*region.frames), box=region.box, value=0.0)  # box: x0, y0, x1, y1
        after_pix = model(masked)
    after_tok = ablate(model, clean, Ablation.zero("blocks.0.hook_resid_pre", positions=list(region.positions)))
    out = {}
    for name, after in (("pixels", after_pix), ("tokens", after_tok)):
        table = topk_table(logits_c, after, model.labels, k=rows)
        out[name] = {"table": table.to_records(), "class_logit_before": float(logits_c[0, cls]),
                     "class_logit_after": float(after[0, cls]), "class_change": float(after[0, cls] - logits_c[0, cls]),
                     "top1_after": model.labels.get(int(after[0].argmax()), str(int(after[0].argmax())))}  # fmt: skip
    out["region_fraction_of_tokens"] = len(region.positions) / model.cfg.n_tubelets
    return out


def _block_patching(model, corrupt, cache_c, cache_r, metric, s: int, signal_pos, norm_recovery: bool,
                    opts) -> dict:  # fmt: skip
    from vivit_lens.interp.metrics import SignalRecovery
    from vivit_lens.interp.patching import get_act_patch_attn_out, get_act_patch_mlp_out

    layers = range(s + 1)
    attn = get_act_patch_attn_out(model, corrupt, cache_c, metric, positions="all", layers=layers, **opts)
    mlp = get_act_patch_mlp_out(model, corrupt, cache_c, metric, positions="all", layers=layers, **opts)
    out = {"attention": _list(attn), "mlp": _list(mlp), "signal_norm": float((metric.clean - metric.corrupt).norm())}
    table = [{"layer": l, "attention": float(attn[l]), "mlp": float(mlp[l])} for l in layers]
    if norm_recovery:
        norm = SignalRecovery.from_caches(cache_c, cache_r, metric.hook, signal_pos, kind="norm")
        attn_n = get_act_patch_attn_out(model, corrupt, cache_c, norm, positions="all", layers=layers, **opts)
        mlp_n = get_act_patch_mlp_out(model, corrupt, cache_c, norm, positions="all", layers=layers, **opts)
        out.update(attention_norm=_list(attn_n), mlp_norm=_list(mlp_n))
        for l, row in zip(layers, table):
            row.update(attention_norm=float(attn_n[l]), mlp_norm=float(mlp_n[l]))
    return {**out, "table": table}


def _paths(model, clean, corrupt, metric, res: dict, s: int, n_composers: int, opts) -> dict:
    from vivit_lens.interp.paths import FinalResid, MLPInput, PathPatcher

    cfg = model.cfg
    pp = PathPatcher(model, clean, corrupt, metric, batch_size=opts["batch_size"], progress=opts["progress"])
    out: dict[str, Any] = {"metric": "signal recovery (%)", "freeze": True}
    if s == cfg.n_layers - 1:
        direct = pp.senders_into(FinalResid(positions=metric.positions))
        at_cls = model.grid.cls is not None and metric.positions == (model.grid.cls,)
        where = "[CLS]" if at_cls else "the readout" if metric.positions == tuple(model.readout_positions) else "all tokens"
        out["direct_to_final"] = {"receiver": "final residual at " + where,
                                  "heads": _list(direct.heads()), "mlps": _list(direct.mlps()),
                                  "embed": float(direct.values[0, 0])}  # fmt: skip
    else:
        out["direct_to_final"] = None
        out["direct_note"] = "direct paths need the signal at the last layer (--signal-layer default)"
    mlp = torch.tensor(res["patching"]["mlp"]) if "mlp" in res.get("patching", {}) else None
    if mlp is None:
        raise ValueError("the 'paths' step needs the 'patching' step")
    composers = torch.argsort(mlp, descending=True, stable=True)[: min(n_composers, len(mlp))].tolist()
    out["into_mlps"] = []
    for l in composers:
        into = pp.senders_into(MLPInput(l), senders="heads")
        m = into.heads().double()
        m[l + 1 :] = float("nan")  # a head after MLP l cannot write into its input: unreachable, stored as null
        reach = m[: l + 1].abs().reshape(-1)  # the reachable heads come first in layer-major order
        order = torch.argsort(reach, descending=True, stable=True)[:5].tolist()
        out["into_mlps"].append({
            "mlp_layer": l, "mlp_recovery": float(mlp[l]), "heads": _list(m),
            "top_heads": [{"layer": o // cfg.n_heads, "head": o % cfg.n_heads, "effect": float(m.reshape(-1)[o])}
                          for o in order],
        })  # fmt: skip
    return out


def _attribution(model, clean, corrupt, metric, res: dict, s: int) -> dict:
    from vivit_lens.interp.attribution import agreement, attribution_patch
    from vivit_lens.interp.paths import FinalResid, MLPInput

    attr = attribution_patch(model, clean, corrupt, metric)
    pat = res.get("patching", {})
    out: dict[str, Any] = {}

    def compare(name: str, exact, approx, k: int) -> None:
        exact_t, approx_t = torch.as_tensor(exact, dtype=torch.float64), approx.detach().double()
        out[name] = {"exact": _list(exact_t), "attribution": _list(approx_t),
                     "agreement": jsonable(agreement(exact_t, approx_t, k=k))}  # fmt: skip

    if "attention" in pat:
        compare("attention", pat["attention"], attr.attn_out.sum(-1)[: s + 1], k=3)
        compare("mlp", pat["mlp"], attr.mlp_out.sum(-1)[: s + 1], k=3)
    if "heads" in pat:
        compare("heads", pat["heads"], attr.head_out[: s + 1], k=10)
    paths = res.get("paths") or {}
    if paths.get("direct_to_final"):
        approx = attr.senders_into(FinalResid(positions=metric.positions))
        compare("direct_heads", paths["direct_to_final"]["heads"], approx.heads(), k=10)
    for entry in paths.get("into_mlps", []):  # only the heads that can reach the MLP (layers <= its layer)
        l = entry["mlp_layer"]
        approx = attr.senders_into(MLPInput(l), senders="heads").heads()[: l + 1]
        compare(f"heads_into_mlp{l}", entry["heads"][: l + 1], approx, k=10)
    return out
