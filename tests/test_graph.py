"""Circuit graphs: selection by threshold / top-k against a hand-made table, JSON round trip, the drawing."""

from __future__ import annotations

import json

import pytest
import torch

from tests.test_paths import minimal_pair
from vivit_lens.attribution import attribution_patch
from vivit_lens.graph import Circuit, CircuitEdge
from vivit_lens.metrics import Logit
from vivit_lens.paths import MLP, Embed, FinalResid, Head, HeadInput, MLPInput, PathPatcher


@pytest.fixture(scope="module")
def scores(small_model):
    clean, corrupt = minimal_pair(small_model.cfg)
    pp = PathPatcher(small_model, clean, corrupt, Logit(3))
    return pp.senders_into(FinalResid()), pp.matrix()


EDGES = {
    (Head(0, 1), HeadInput(2, 3, "q")): 0.5, (Head(0, 1), HeadInput(2, 3, "k")): -0.2,
    (MLP(0), MLPInput(1)): 0.05, (MLP(1), FinalResid()): -0.9, (Embed(), HeadInput(0, 2, "v")): 0.3,
    (Head(1, 0), MLPInput(1)): 0.0,
}  # fmt: skip


def test_threshold_and_top_k_select_by_absolute_score():
    c = Circuit.from_scores(edge_scores=EDGES, threshold=0.25, n_layers=3, n_heads=4)
    assert {(e.source, e.target, e.input, e.score) for e in c.edges} == {
        ("L0H1", "L2H3", "q", 0.5), ("MLP1", "Final", "resid", -0.9), ("Embed", "L0H2", "v", 0.3)}  # fmt: skip
    assert set(c.nodes) == {"L0H1", "L2H3", "MLP1", "Final", "Embed", "L0H2"}
    top = Circuit.from_scores(edge_scores=EDGES, top_k=2)
    assert [(e.source, e.target) for e in top.edges] == [("L0H1", "L2H3"), ("MLP1", "Final")]
    both = Circuit.from_scores(edge_scores=EDGES, threshold=0.1, top_k=10)
    assert len(both.edges) == 4, "zero and sub-threshold edges are dropped"
    assert len(Circuit.from_scores(edge_scores=EDGES).edges) == 5, "no selection: every non-zero edge"


def test_nodes_from_maps_and_endpoint_scores():
    heads = torch.tensor([[0.0, 0.4, 0.0, 0.0], [0.0, 0.0, -0.6, 0.0], [0.0, 0.0, 0.0, 0.1]])
    c = Circuit.from_scores(node_scores={"heads": heads, "mlps": torch.tensor([0.7, 0.0, 0.0]), "embed": 0.05},
                            edge_scores={(Head(0, 1), HeadInput(2, 3, "v")): 0.3}, top_k=3)  # fmt: skip
    want = {"L0H1": 0.4, "L1H2": -0.6, "MLP0": 0.7, "L2H3": 0.1}
    assert {n: c.nodes[n].score for n in c.nodes} == pytest.approx(want)
    assert (c.n_layers, c.n_heads) == (3, 4)
    assert c.nodes["L1H2"].kind == "head" and c.nodes["MLP0"].kind == "mlp" and c.nodes["L1H2"].layer == 1
    only_heads = Circuit.from_scores(node_scores=heads, threshold=0.3)
    assert set(only_heads.nodes) == {"L0H1", "L1H2"}


def test_from_path_scores_exact_and_attributed(small_model, scores):
    nodes, edges = scores
    c = Circuit.from_scores(node_scores=nodes, edge_scores=edges, top_k=6)
    assert len(c.edges) == 6 and (c.n_layers, c.n_heads) == (3, 4)
    flat = sorted(((s, g[0], edges.values[i, j].item()) for i, s in enumerate(edges.senders)
                   for j, g in enumerate(edges.receivers)), key=lambda t: -abs(t[2]))[:6]  # fmt: skip
    assert {e.score for e in c.edges} == {v for _, _, v in flat}
    for e in c.edges:
        assert c.nodes[e.source].kind in ("head", "mlp", "embed") and e.target in c.nodes
    assert c.meta["method"] == "exact"
    top_nodes = sorted(zip(nodes.senders, nodes.values[:, 0].tolist()), key=lambda t: -abs(t[1]))[:6]
    assert all(s.name in c.nodes and c.nodes[s.name].score == v for s, v in top_nodes)
    clean, corrupt = minimal_pair(small_model.cfg)
    a = attribution_patch(small_model, clean, corrupt, Logit(3))
    ca = Circuit.from_scores(node_scores=a.head_out, edge_scores=a.matrix(), threshold=1e-3)
    assert ca.meta["method"] == "attribution" and all(abs(e.score) >= 1e-3 for e in ca.edges)


def test_json_round_trip(tmp_path, scores):
    nodes, edges = scores
    c = Circuit.from_scores(node_scores=nodes, edge_scores=edges, top_k=8)
    text = c.to_json(tmp_path / "c.json")
    d = json.loads((tmp_path / "c.json").read_text())
    assert json.loads(text) == d and len(d["edges"]) == 8
    assert set(d["nodes"][0]) == {"id", "kind", "layer", "head", "score"}
    assert set(d["edges"][0]) == {"source", "target", "input", "score"}
    back = Circuit.from_json(tmp_path / "c.json")
    assert back.nodes == c.nodes and back.edges == c.edges and back.meta == c.meta
    assert Circuit.from_json(text).edges == c.edges
    assert isinstance(back.edges[0], CircuitEdge)


def test_draw_writes_a_layered_png(tmp_path, scores):
    from matplotlib.image import imread

    nodes, edges = scores
    c = Circuit.from_scores(node_scores=nodes, edge_scores=edges, top_k=10)
    fig = c.draw(tmp_path / "c.png")
    img = imread(tmp_path / "c.png")
    assert img.ndim == 3 and img.shape[1] > img.shape[0] > 300
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["embed", "L0", "L1", "L2", "logits"]
    from matplotlib.patches import FancyArrowPatch

    assert sum(isinstance(p, FancyArrowPatch) for p in ax.patches) == len(c.edges)
    # every drawn node sits in its layer's column: heads at 2l+1, MLPs at 2l+2
    for n in c.nodes.values():
        x, _ = c._xy(n)
        assert x == {"head": 2 * (n.layer or 0) + 1, "mlp": 2 * (n.layer or 0) + 2, "embed": 0, "final": 7}[n.kind]
    Circuit.from_scores(edge_scores=EDGES, top_k=3).draw(tmp_path / "no_node_scores.png")


def test_bad_arguments():
    with pytest.raises(ValueError, match="give node_scores"):
        Circuit.from_scores()
    with pytest.raises(ValueError, match="top_k"):
        Circuit.from_scores(edge_scores=EDGES, top_k=0)
    with pytest.raises(ValueError, match="threshold"):
        Circuit.from_scores(edge_scores=EDGES, threshold=-1)
    with pytest.raises(ValueError, match="receiver must be"):
        Circuit.from_scores(edge_scores={(Head(0, 1), Head(1, 1)): 1.0})
