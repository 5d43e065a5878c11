"""Tidy CSV tables of an analysis or a study (one observation per row, one column per variable), for pandas.

    tables = analysis_tables(res)                  # {name: list of row dicts}
    write_csv(tables, "out/csv")                   # out/csv/<name>.csv
    pd.read_csv("out/csv/recovery.csv").pivot(index="layer", columns="component", values="recovery")

Analysis: predictions, cascade, recovery, heads, paths (unreachable paths flagged, value empty), dla_tokens,
ablation, attribution. Study: per_pair (every pair's value of every quantity), ci (mean and 95% CI), probe.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

Rows = list[dict[str, Any]]


def _cells(value: Any, axes: Sequence[str]) -> Iterator[tuple[dict[str, int], Any]]:
    """(index by axis name, value) of every element of a nested list with the named `axes`."""
    if not axes:
        yield {}, value
        return
    for i, v in enumerate(value):
        for idx, x in _cells(v, axes[1:]):
            yield {axes[0]: i, **idx}, x


def analysis_tables(res: Mapping) -> dict[str, Rows]:
    """The tidy tables of one pair's analysis (a JSON-ready results dict)."""
    out: dict[str, Rows] = {}
    if "predictions" in res:
        out["predictions"] = [{"clip": clip, **{k: r[k] for k in ("rank", "class_id", "label", "logit", "prob")}}
                              for clip in ("clean", "corrupt") for r in res["predictions"][clip]]  # fmt: skip
    if "delta_cascade" in res:
        c = res["delta_cascade"]
        out["cascade"] = [{"layer": l, "hook": h, "where": w, "delta_l2": c[h][w][l]}
                          for h in c["hooks"] for w in ("token_mean", "cls") for l in c["layers"]]  # fmt: skip
    p = res.get("patching", {})
    if "attention" in p:
        out["recovery"] = [{"layer": r["layer"], "component": comp, "metric": metric, "recovery": r.get(key)}
                           for r in p["table"] for comp in ("attention", "mlp")
                           for metric, key in (("signal", comp), ("norm", f"{comp}_norm")) if key in r]  # fmt: skip
    if "heads" in p:
        dla = res.get("dla", {}).get("heads", {})
        mass = res.get("cls_attention", {}).get("region_mass")
        out["heads"] = [{"layer": i["layer"], "head": i["head"], "recovery": v,
                         "dla_clean": dla["clean"][i["layer"]][i["head"]] if dla else None,
                         "dla_corrupt": dla["corrupt"][i["layer"]][i["head"]] if dla else None,
                         "region_mass": mass[i["layer"]][i["head"]] if mass else None}
                        for i, v in _cells(p["heads"], ("layer", "head"))]  # fmt: skip
    pth = res.get("paths") or {}
    if pth:
        rows: Rows = []
        direct = pth.get("direct_to_final")
        if direct:
            rows += [{"sender": f"L{i['layer']}H{i['head']}", "receiver": direct["receiver"], "effect": v,
                      "reachable": True} for i, v in _cells(direct["heads"], ("layer", "head"))]  # fmt: skip
            rows += [{"sender": f"MLP{l}", "receiver": direct["receiver"], "effect": v, "reachable": True}
                     for l, v in enumerate(direct["mlps"])]  # fmt: skip
        for e in pth.get("into_mlps", []):
            rows += [{"sender": f"L{i['layer']}H{i['head']}", "receiver": f"MLP{e['mlp_layer']} input", "effect": v,
                      "reachable": i["layer"] <= e["mlp_layer"]} for i, v in _cells(e["heads"], ("layer", "head"))]
        out["paths"] = rows
    if "dla" in res:
        d = res["dla"]["tokens"]
        out["dla_tokens"] = [{"clip": clip, "t": i["t"], "row": i["row"], "col": i["col"], "dla": v}
                             for clip in ("clean", "corrupt") for i, v in _cells(d[clip], ("t", "row", "col"))]
    if "ablation" in res:
        out["ablation"] = [{"ablated": key, **{k: r[k] for k in ("rank", "label", "original", "ablated", "change",
                                                                  "ablated_rank")}}
                           for key in ("pixels", "tokens") for r in res["ablation"][key]["table"]]  # fmt: skip
    if res.get("attribution"):
        out["attribution"] = [{"comparison": name, "index": k, "exact": e, "attribution": a}
                              for name, v in res["attribution"].items()
                              for k, (e, a) in enumerate(zip(np.ravel(np.asarray(v["exact"], dtype=object)),
                                                             np.ravel(np.asarray(v["attribution"], dtype=object))))]
    return out


AXES = {"attention_recovery": ("layer",), "mlp_recovery": ("layer",), "head_recovery": ("layer", "head"),
        "cascade_token_mean": ("layer",), "cascade_cls": ("layer",), "region_mass_ratio": ("layer", "head")}


def _index(idx: Mapping[str, int]) -> dict[str, Any]:
    return {"layer": idx.get("layer"), "head": idx.get("head")}


def study_tables(st: Mapping) -> dict[str, Rows]:
    """The tidy tables of a study: every pair's value, the CIs, the probe records."""
    per_pair: Rows = []
    cis: Rows = []
    for dom, d in st["domains"].items():
        for row in d.get("per_pair", []):
            for key, value in row.items():
                if key == "pair":
                    continue
                for idx, v in _cells(value, AXES.get(key, ())):
                    per_pair.append({"domain": dom, "pair": row["pair"], "quantity": key, **_index(idx), "value": v})
        for key, ci in d.get("ci", {}).items():
            axes = AXES.get(key, ())
            for idx, m in _cells(ci["mean"], axes):
                cis.append({"domain": dom, "quantity": key, **_index(idx), "mean": m, "lo": _pick(ci["lo"], idx, axes),
                            "hi": _pick(ci["hi"], idx, axes), "n": ci.get("n")})  # fmt: skip
    probe = [{"domain": dom, "probe": "outcome", **r} for dom, p in st.get("probe", {}).items()
             for r in p.get("records", [])]  # fmt: skip
    probe += [{"domain": name, "probe": "transfer", **r} for name, rec in (st.get("transfer") or {}).items()
              for r in rec]  # fmt: skip
    return {"per_pair": per_pair, "ci": cis, "probe": probe}


def _pick(a: Any, idx: Mapping[str, int], axes: Sequence[str]) -> Any:
    for ax in axes:
        a = a[idx[ax]]
    return a


def write_csv(tables: Mapping[str, Rows], folder: str | Path) -> Path:
    """One `<name>.csv` per table in `folder` (header from the union of the rows' keys, in first-seen order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in tables.items():
        fields = list(dict.fromkeys(k for r in rows for k in r))
        with (folder / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    return folder


__all__ = ["analysis_tables", "study_tables", "write_csv"]
