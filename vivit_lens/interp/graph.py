"""A circuit as a graph: components (nodes) and residual-stream paths (edges) with their scores.

Build it from exact path patching or attribution scores (`vivit_lens.paths`, `vivit_lens.attribution`),
keep what passes a threshold or the top k, export it to JSON and draw it layer by layer.

    edges = PathPatcher(model, clean, corrupt, Logit(31)).matrix()        # or attribution_patch(...).matrix()
    circuit = Circuit.from_scores(node_scores=attr.senders_into(FinalResid()), edge_scores=edges, top_k=20)
    circuit.to_json("circuit.json"); circuit.draw("circuit.png")
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from torch import Tensor

from vivit_lens.interp.paths import MLP, Embed, FinalResid, Head, HeadInput, MLPInput, PathScores


@dataclass(frozen=True)
class CircuitNode:
    """A component: `kind` is "embed", "head", "mlp" or "final" (the final residual at [CLS])."""

    id: str
    kind: str
    layer: int | None = None
    head: int | None = None
    score: float | None = None


@dataclass(frozen=True)
class CircuitEdge:
    """A path from `source` to `target` node, entering it at `input` ("q", "k", "v", "mlp" or "resid")."""

    source: str
    target: str
    input: str
    score: float


def _sender_node(s, score: float | None = None) -> CircuitNode:
    if isinstance(s, Head):
        return CircuitNode(s.name, "head", s.layer, s.head, score)
    if isinstance(s, MLP):
        return CircuitNode(s.name, "mlp", s.layer, None, score)
    if isinstance(s, Embed):
        return CircuitNode(s.name, "embed", None, None, score)
    raise ValueError(f"a node must be Head, MLP or Embed, got {s!r}")


def _receiver_node(r) -> tuple[CircuitNode, str]:
    if isinstance(r, HeadInput):
        return CircuitNode(Head(r.layer, r.head).name, "head", r.layer, r.head), r.kind
    if isinstance(r, MLPInput):
        return CircuitNode(MLP(r.layer).name, "mlp", r.layer), "mlp"
    if isinstance(r, FinalResid):
        return CircuitNode("Final", "final"), "resid"
    raise ValueError(f"a receiver must be HeadInput, MLPInput or FinalResid, got {r!r}")


def _node_scores(scores) -> tuple[dict[str, tuple[CircuitNode, float]], int | None, int | None]:
    """Normalise the accepted node-score formats to {id: (node, score)} (and the model size where known)."""
    if scores is None:
        return {}, None, None
    if isinstance(scores, PathScores):
        if scores.values.shape[1] != 1:
            raise ValueError("node scores from PathScores need one receiver group (e.g. senders_into(FinalResid()))")
        out = {s.name: (_sender_node(s), float(v)) for s, v in zip(scores.senders, scores.values[:, 0])}
        return out, scores.n_layers, scores.n_heads
    if isinstance(scores, Tensor):
        scores = {"heads": scores} if scores.ndim == 2 else {"mlps": scores}
    if not isinstance(scores, dict):
        raise ValueError(f"node scores must be PathScores, a tensor or a dict, got {type(scores).__name__}")
    out, n_layers, n_heads = {}, None, None
    for key, value in scores.items():
        if key == "heads":
            n_layers, n_heads = value.shape
            for l in range(n_layers):
                for h in range(n_heads):
                    out[Head(l, h).name] = (_sender_node(Head(l, h)), float(value[l, h]))
        elif key == "mlps":
            n_layers = len(value)
            out.update({MLP(l).name: (_sender_node(MLP(l)), float(value[l])) for l in range(len(value))})
        elif key == "embed":
            out["Embed"] = (_sender_node(Embed()), float(value))
        else:
            node = _sender_node(key)
            out[node.id] = (node, float(value))
    return out, n_layers, n_heads


def _edge_scores(scores) -> tuple[list[tuple[CircuitNode, CircuitNode, str, float]], int | None, int | None]:
    if scores is None:
        return [], None, None
    if isinstance(scores, PathScores):
        if any(len(g) != 1 for g in scores.receivers):
            raise ValueError("edge scores need one receiver per column (PathPatcher.matrix / receivers_of)")
        pairs = [((s, g[0]), float(scores.values[i, j])) for i, s in enumerate(scores.senders)
                 for j, g in enumerate(scores.receivers)]  # fmt: skip
        n_layers, n_heads = scores.n_layers, scores.n_heads
    elif isinstance(scores, dict):
        pairs, n_layers, n_heads = [(k, float(v)) for k, v in scores.items()], None, None
    else:
        raise ValueError(
            f"edge scores must be PathScores or a dict {{(sender, receiver): score}}, got {type(scores).__name__}"
        )
    out = []
    for (s, r), v in pairs:
        target, inp = _receiver_node(r)
        out.append((_sender_node(s), target, inp, v))
    return out, n_layers, n_heads


def _select(scores: list[float], threshold: float | int | None, top_k: int | None) -> list[int]:
    """Indices kept: |score| >= threshold, then the top_k largest |score| (ties in input order)."""
    idx = [i for i, v in enumerate(scores) if v != 0 and not math.isnan(v)]
    if threshold is not None:
        idx = [i for i in idx if abs(scores[i]) >= threshold]
    if top_k is not None:
        idx = sorted(idx, key=lambda i: -abs(scores[i]))[:top_k]
    return sorted(idx)


@dataclass
class Circuit:
    """Nodes and edges with scores; `n_layers`/`n_heads` fix the drawing's grid."""

    nodes: dict[str, CircuitNode]
    edges: list[CircuitEdge]
    n_layers: int
    n_heads: int
    meta: dict = field(default_factory=dict)

    @classmethod
    def from_scores(
        cls,
        node_scores=None,
        edge_scores=None,
        *,
        threshold: float | int | None = None,
        top_k: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
    ) -> Circuit:
        """Keep the nodes and edges whose |score| >= `threshold` and/or the `top_k` largest of each.

        `node_scores`: a `PathScores` with one receiver group, a `[layer head]` or `[layer]` tensor, or a
        dict (`{"heads": [layer head], "mlps": [layer], "embed": x}` or `{Head(...): x, ...}`).
        `edge_scores`: a `PathScores` with single receivers (`.matrix()`), or `{(sender, receiver): x}`.
        The endpoints of kept edges are nodes too. With neither threshold nor top_k, every non-zero score is kept.
        """
        if threshold is not None and threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if top_k is not None and top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        if node_scores is None and edge_scores is None:
            raise ValueError("give node_scores, edge_scores or both")
        nodes_in, nl1, nh1 = _node_scores(node_scores)
        edges_in, nl2, nh2 = _edge_scores(edge_scores)
        known = {k: v for k, (_, v) in nodes_in.items()}
        items = list(nodes_in.values())
        nodes = {}
        for i in _select([v for _, v in items], threshold, top_k):
            node, v = items[i]
            nodes[node.id] = CircuitNode(node.id, node.kind, node.layer, node.head, v)
        edges = []
        for i in _select([e[3] for e in edges_in], threshold, top_k):
            src, dst, inp, v = edges_in[i]
            for n in (src, dst):
                if n.id not in nodes:
                    nodes[n.id] = CircuitNode(n.id, n.kind, n.layer, n.head, known.get(n.id))
            edges.append(CircuitEdge(src.id, dst.id, inp, v))
        layers = [n.layer for n in nodes.values() if n.layer is not None]
        heads = [n.head for n in nodes.values() if n.head is not None]
        n_layers = n_layers or nl1 or nl2 or 1 + max(layers, default=0)
        n_heads = n_heads or nh1 or nh2 or 1 + max(heads, default=0)
        meta = {"threshold": threshold, "top_k": top_k}
        for scores in (node_scores, edge_scores):
            if isinstance(scores, PathScores):
                meta.update(method=scores.method, direction=scores.direction, metric=scores.metric)
        return cls(dict(sorted(nodes.items(), key=lambda kv: _order(kv[1]))), edges, n_layers, n_heads, meta)

    # Export ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        nodes, edges = [asdict(n) for n in self.nodes.values()], [asdict(e) for e in self.edges]
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "meta": self.meta, "nodes": nodes, "edges": edges}

    def to_json(self, path: str | Path | None = None) -> str:
        """The circuit as JSON text (nodes, edges, scores); also written to `path` when given."""
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, source: str | Path) -> Circuit:
        """Read a circuit back from a JSON file or JSON text."""
        text = source if isinstance(source, str) and source.lstrip().startswith("{") else Path(source).read_text()
        d = json.loads(text)
        nodes = {n["id"]: CircuitNode(**n) for n in d["nodes"]}
        return cls(nodes, [CircuitEdge(**e) for e in d["edges"]], d["n_layers"], d["n_heads"], d.get("meta", {}))

    # Drawing --------------------------------------------------------------------------------------
    def _xy(self, node: CircuitNode) -> tuple[float, float]:
        mid = (self.n_heads - 1) / 2
        if node.kind == "embed":
            return 0.0, mid
        if node.kind == "final":
            return 2.0 * self.n_layers + 1, mid
        if node.kind == "mlp":
            return 2.0 * node.layer + 2, mid
        return 2.0 * node.layer + 1, float(self.n_heads - 1 - node.head)

    def draw(self, path: str | Path | None = None, title: str | None = None):
        """A layered picture, layers left to right: heads as circles, MLPs as squares, the embedding and the
        final residual as diamonds. Edge width ~ |score|, colour by sign (blue +, red -), line style by the
        input entered (q solid, k dashed, v dotted). Node colour: node score. Returns the matplotlib Figure."""
        from matplotlib.colors import TwoSlopeNorm
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.patches import FancyArrowPatch

        L, H = self.n_layers, self.n_heads
        fig = Figure(figsize=(max(6.0, 1.05 * (2 * L + 2)), max(3.5, 0.55 * H + 2)))
        ax = fig.add_subplot()
        for l in range(L):  # a band per layer; only the circuit's own nodes are drawn
            ax.axvspan(2 * l + 0.5, 2 * l + 2.5, color="0.94" if l % 2 == 0 else "0.98", zorder=0)
        scored = [abs(n.score) for n in self.nodes.values() if n.score is not None]
        vmax = max(scored, default=1.0) or 1.0
        norm = TwoSlopeNorm(0.0, -vmax, vmax)
        cmap = _cmap()
        wmax = max([abs(e.score) for e in self.edges], default=1.0) or 1.0
        style = {"q": "-", "k": "--", "v": ":", "mlp": "-", "resid": "-"}
        for i, e in enumerate(self.edges):
            a, b = self._xy(self.nodes[e.source]), self._xy(self.nodes[e.target])
            # parallel edges into one head's q, k and v bend apart; long edges bow to clear the nodes between
            rad = {"k": 0.15, "v": 0.3}.get(e.input, 0.0) + (0.0 if b[0] - a[0] <= 1 else 0.08 * (1 if i % 2 else -1))
            ax.add_patch(FancyArrowPatch(
                a, b, arrowstyle="-|>", mutation_scale=9, connectionstyle=f"arc3,rad={rad}",
                linewidth=0.6 + 4.0 * abs(e.score) / wmax, linestyle=style.get(e.input, "-"),
                color="#2166ac" if e.score > 0 else "#b2182b", alpha=0.75, shrinkA=9, shrinkB=9, zorder=2,
            ))  # fmt: skip
        markers = {"head": ("o", 260), "mlp": ("s", 330), "embed": ("D", 260), "final": ("D", 300)}
        for n in self.nodes.values():
            x, y = self._xy(n)
            marker, size = markers[n.kind]
            face = cmap(norm(n.score)) if n.score is not None else "white"
            ax.scatter([x], [y], s=size, marker=marker, facecolor=face, edgecolor="black", linewidth=1.0, zorder=3)
            label = {"final": "[CLS]\nout", "embed": "Embed"}.get(n.kind, n.id)
            ax.annotate(label, (x, y), xytext=(0, -13 if n.kind != "final" else -17), textcoords="offset points",
                        ha="center", va="top", fontsize=7, zorder=4)  # fmt: skip
        ax.set_xticks([0] + [2 * l + 1.5 for l in range(L)] + [2 * L + 1])
        ax.set_xticklabels(["embed"] + [f"L{l}" for l in range(L)] + ["logits"])
        ax.set_yticks(range(H))
        ax.set_yticklabels([f"H{H - 1 - y}" for y in range(H)], fontsize=7)
        ax.set_xlim(-0.7, 2 * L + 1.7)
        ax.set_ylim(-1.2, H - 0.3)
        for side in ("top", "right", "left"):
            ax.spines[side].set_visible(False)
        # the legend names only what is drawn: node kinds, edge signs and the input line styles present
        kinds = {n.kind for n in self.nodes.values()}
        handles = [Line2D([], [], marker=m, ls="", mfc="white", mec="black", label=t)
                   for k, m, t in (("head", "o", "attention head"), ("mlp", "s", "MLP")) if k in kinds]
        signs = {e.score > 0 for e in self.edges}
        handles += [Line2D([], [], color=c, label=t) for pos, c, t in ((True, "#2166ac", "+ score"),
                                                                     (False, "#b2182b", "- score")) if pos in signs]
        inputs = {e.input for e in self.edges}
        solid = [t for k, t in (("q", "q"), ("mlp", "MLP input"), ("resid", "residual")) if k in inputs]
        lines = ([("-", " / ".join(solid))] if solid else []) + [(ls, k) for k, ls in (("k", "--"), ("v", ":"))
                                                                 if k in inputs]
        if len(lines) > 1:  # one line style needs no key
            handles += [Line2D([], [], color="0.3", ls=ls, label=f"into {t}") for ls, t in lines]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7, frameon=False)
        if scored:
            from matplotlib.cm import ScalarMappable

            fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, fraction=0.025, pad=0.16, label="node score")
        meta = ", ".join(f"{k}={v}" for k, v in self.meta.items() if v is not None and k in ("method", "direction"))
        default = f"circuit: {len(self.nodes)} nodes, {len(self.edges)} edges" + (f" ({meta})" if meta else "")
        ax.set_title(title or default, fontsize=9)
        if path is not None:
            fig.savefig(path, dpi=150, bbox_inches="tight")
        return fig


def _cmap():
    from matplotlib import colormaps

    return colormaps["RdBu"]  # blue positive, red negative, as the edges


def _order(n: CircuitNode) -> tuple:
    rank = {"embed": 0, "head": 1, "mlp": 2, "final": 3}[n.kind]
    return (-1 if n.kind == "embed" else n.layer if n.layer is not None else 10**6, rank, n.head or 0, n.id)


__all__ = ["Circuit", "CircuitEdge", "CircuitNode"]
