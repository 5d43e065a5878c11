"""analysis.analyze_pair / study: every reported number against an independent computation (hand-written hooks,
the formula, the model's own forward), and the plots/report built from them.

Models are small random transformers ViViTs with a processor that keeps the rendered size, and pairs come
from `synthetic.render_pair`, so the outcome box of the spec maps onto the model input one to one.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from tests.conftest import make_hf, max_diff
from vivit_lens import HookedViViT, analysis, synthetic, video
from vivit_lens.config import ProcessorConfig

ARCH = dict(image_size=32, num_frames=8, tubelet_size=[2, 8, 8], hidden_size=48, num_hidden_layers=3,
            num_attention_heads=4, intermediate_size=96)  # fmt: skip
LABELS = {i: a for i, a in enumerate(synthetic.ACTIONS)}


def make_checkpoint(folder, seed: int = 0, **overrides):
    """A random HF ViViT saved with `save_pretrained`, plus a processor that keeps the model's input size."""
    arch = {**ARCH, **overrides}
    labels = overrides.pop("labels", LABELS)
    arch.pop("labels", None)
    hf = make_hf(seed, **arch, num_labels=len(labels), id2label=labels, label2id={v: k for k, v in labels.items()})
    hf.save_pretrained(folder)
    size = arch["image_size"]
    proc = ProcessorConfig(shortest_edge=min(size) if isinstance(size, list) else size,
                           crop_size=tuple(size) if isinstance(size, list) else (size, size))  # fmt: skip
    (folder / "preprocessor_config.json").write_text(json.dumps(proc.to_hf_dict()))
    return folder


def rendered_pair(model, action: str = "bowling", seed: int = 3):
    """(clean pixels, corrupt pixels, PairSpec) rendered at the model's frame count and size."""
    clean, corrupt, spec = synthetic.render_pair(action, seed, frames=model.cfg.num_frames, size=model.cfg.image_size)
    x = video.preprocess([clean, corrupt], model.processor)
    return x[:1], x[1:], spec


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return HookedViViT.from_pretrained(make_checkpoint(tmp_path_factory.mktemp("analysis_ckpt")))


@pytest.fixture(scope="module")
def pair(model):
    return rendered_pair(model)


@pytest.fixture(scope="module")
def region(model, pair):
    top, left, bottom, right = pair[2].box
    return analysis.Region.from_box(model, (left, top, right, bottom), (pair[2].decisive_frame, model.cfg.num_frames))


@pytest.fixture(scope="module")
def result(model, pair, region):
    return analysis.jsonable(analysis.analyze_pair(model, pair[0], pair[1], region=region, progress=False))


def patched_signal(model, corrupt, clean_cache, hook_name, index=None):
    """The last block's [CLS] residual of the corrupt run with `hook_name` (optionally `[..., index]`) set to its
    clean value: a hand-written hook, independent of the patching module."""
    def patch(act, hook):
        act = act.clone()
        if index is None:
            act[:] = clean_cache[hook_name]
        else:
            act[:, :, index] = clean_cache[hook_name][:, :, index]
        return act

    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    store = {}
    with torch.no_grad(), model.hooks([(hook_name, patch), (last, lambda t, hook: store.setdefault("r", t.clone()))]):
        model(corrupt)
    return store["r"][:, 0]


def recovery(r, clean, corrupt) -> float:
    """The paper's % of the signal recovered, written out: 100 <r - r_corrupt, delta> / ||delta||^2."""
    delta = (clean - corrupt).double().flatten()
    return float(100 * ((r - corrupt).double().flatten() @ delta) / (delta @ delta))


@pytest.fixture(scope="module")
def caches(model, pair):
    with torch.no_grad():
        return model.run_with_cache(pair[0])[1], model.run_with_cache(pair[1])[1]


# Numbers against independent computations ---------------------------------------------------------
def test_top5_are_the_models_topk(model, pair, result):
    for x, key in ((pair[0], "clean"), (pair[1], "corrupt")):
        with torch.no_grad():
            values, idx = model(x)[0].topk(5)
        got = result["predictions"][key]
        assert [g["class_id"] for g in got] == idx.tolist()
        assert [g["label"] for g in got] == [LABELS[i] for i in idx.tolist()]
        assert max(abs(g["logit"] - v) for g, v in zip(got, values.tolist())) < 1e-6


def test_block_recovery_matches_hand_written_patching(model, pair, caches, result):
    cc, cr = caches
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    clean_r, corrupt_r = cc[last][:, 0], cr[last][:, 0]
    for l in range(model.cfg.n_layers):
        for kind, hook in (("mlp", f"blocks.{l}.hook_mlp_out"), ("attention", f"blocks.{l}.hook_attn_out")):
            want = recovery(patched_signal(model, pair[1], cc, hook), clean_r, corrupt_r)
            got = result["patching"][kind][l]
            assert abs(got - want) < 1e-3, f"{kind} layer {l}: reported {got}, by hand {want}"
            assert result["patching"]["table"][l][kind] == got


def test_head_recovery_matches_hand_written_patching(model, pair, caches, result):
    cc, cr = caches
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    heads = np.asarray(result["patching"]["heads"])
    assert heads.shape == (model.cfg.n_layers, model.cfg.n_heads)
    for l, h in ((0, 1), (model.cfg.n_layers - 1, 3)):
        r = patched_signal(model, pair[1], cc, f"blocks.{l}.attn.hook_z", index=h)
        want = recovery(r, cc[last][:, 0], cr[last][:, 0])
        assert abs(heads[l, h] - want) < 1e-3, (l, h, heads[l, h], want)


def test_norm_recovery_is_direction_blind_size(model, pair, caches, result):
    cc, cr = caches
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    r = patched_signal(model, pair[1], cc, "blocks.1.hook_mlp_out")
    want = 100 * float((r - cr[last][:, 0]).norm() / (cc[last][:, 0] - cr[last][:, 0]).norm())
    assert abs(result["patching"]["mlp_norm"][1] - want) < 1e-3


def test_cascade_is_the_norm_of_the_delta(model, caches, result):
    cc, cr = caches
    for l in range(model.cfg.n_layers):
        d = (cc[f"blocks.{l}.hook_resid_post"] - cr[f"blocks.{l}.hook_resid_post"])[0].double()
        assert abs(result["delta_cascade"]["resid_post"]["token_mean"][l] - float(d.norm(dim=-1).mean())) < 1e-5
        assert abs(result["delta_cascade"]["resid_post"]["cls"][l] - float(d[0].norm())) < 1e-5


def test_dla_sums_to_the_logit_and_maps_the_grid(model, pair, result):
    comp = result["dla"]["components"]
    with torch.no_grad():
        logit = float(model(pair[0])[0, result["class"]["id"]])
    assert abs(sum(comp["clean"]) - logit) < 1e-4
    t, h, w = model.cfg.grid_shape
    tokens = np.asarray(result["dla"]["tokens"]["clean"])
    assert tokens.shape == (t, h, w), "a map on the frames: [t][row][col]"
    # tokens + [CLS] itself = the heads' total [CLS] attribution (b_O excluded)
    heads_total = float(np.sum(result["dla"]["heads"]["clean"]))
    assert abs(tokens.sum() + result["dla"]["tokens"]["cls_self_clean"] - heads_total) < 1e-4
    diff = np.asarray(result["dla"]["tokens"]["difference"])
    np.testing.assert_allclose(diff, tokens - np.asarray(result["dla"]["tokens"]["corrupt"]), atol=1e-9)


def test_default_class_is_the_top_prediction(model, pair, result):
    with torch.no_grad():
        assert result["class"]["id"] == int(model(pair[0]).argmax())


def test_ablation_matches_masking_by_hand(model, pair, region, result):
    x = pair[0].clone()
    x0, y0, x1, y1 = region.box
    x[:, region.frames[0]:region.frames[1], :, y0:y1, x0:x1] = 0.0
    cls = result["class"]["id"]
    with torch.no_grad():
        after = float(model(x)[0, cls])
        before = float(model(pair[0])[0, cls])
    ab = result["ablation"]["pixels"]
    assert abs(ab["class_logit_after"] - after) < 1e-5 and abs(ab["class_change"] - (after - before)) < 1e-5
    rows = ab["table"]
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1)) and rows[0]["class_id"] == cls


def test_token_ablation_zeroes_the_region(model, pair, region, result):
    pos = list(region.positions)

    def zero(act, hook):
        act = act.clone()
        act[:, pos] = 0
        return act

    with torch.no_grad():
        after = model.run_with_hooks(pair[0], fwd_hooks=[("blocks.0.hook_resid_pre", zero)])
    assert abs(result["ablation"]["tokens"]["class_logit_after"] - float(after[0, result["class"]["id"]])) < 1e-5


def test_direct_paths_to_final_are_the_heads_projected_writes(model, caches, result):
    """Frozen direct path into the final [CLS] residual: only the head's own write changes, and the metric is
    linear, so the effect is 100 <dW, delta> / ||delta||^2 with dW = (z_clean - z_corrupt) W_O at [CLS]."""
    cc, cr = caches
    last = f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"
    delta = (cc[last] - cr[last])[0, 0].double()
    direct = np.asarray(result["paths"]["direct_to_final"]["heads"])
    for l, h in ((0, 0), (2, 3), (1, 2)):
        dz = (cc[f"blocks.{l}.attn.hook_z"] - cr[f"blocks.{l}.attn.hook_z"])[0, 0, h].double()
        write = dz @ model.W_O[l, h].detach().double()
        want = float(100 * (write @ delta) / (delta @ delta))
        assert abs(direct[l, h] - want) < 1e-3, (l, h, direct[l, h], want)
    mlp = result["paths"]["direct_to_final"]["mlps"]
    dm = (cc["blocks.1.hook_mlp_out"] - cr["blocks.1.hook_mlp_out"])[0, 0].double()
    assert abs(mlp[1] - float(100 * (dm @ delta) / (delta @ delta))) < 1e-3


def test_heads_into_composers_are_ranked_and_causal(model, result):
    into = result["paths"]["into_mlps"]
    mlp = result["patching"]["mlp"]
    assert [e["mlp_layer"] for e in into] == sorted(range(len(mlp)), key=lambda l: -mlp[l])[:3]
    for e in into:
        m = np.asarray([[np.nan if v is None else v for v in row] for row in e["heads"]], float)
        assert np.isnan(m[e["mlp_layer"] + 1:]).all(), "heads after the MLP cannot reach it: unreachable, not 0"
        assert np.isfinite(m[: e["mlp_layer"] + 1]).all()
        top = e["top_heads"][0]
        assert abs(abs(top["effect"]) - np.nanmax(np.abs(m))) < 1e-9


def test_attribution_of_linear_paths_is_exact(result):
    """The signal metric is linear in the final residual: the attribution of a direct path equals the exact one."""
    d = result["attribution"]["direct_heads"]
    assert max(abs(a - b) for a, b in zip(np.ravel(d["exact"]), np.ravel(d["attribution"]))) < 1e-3
    assert d["agreement"]["pearson"] > 0.999
    for name, entry in result["attribution"].items():
        ag = entry["agreement"]
        assert ag["pearson"] is None or -1 - 1e-9 <= ag["pearson"] <= 1 + 1e-9, name
        assert 0 <= ag["topk_overlap"] <= 1


def test_attention_heads_ranked_by_dla(model, result):
    heads = result["cls_attention"]["heads"]
    dla = np.asarray(result["dla"]["heads"]["clean"])
    assert [abs(h["dla"]) for h in heads] == sorted(np.abs(dla).ravel().tolist(), reverse=True)[: len(heads)]
    for h in heads:
        m = np.asarray(h["map_clean"])
        assert m.shape == model.cfg.grid_shape
        assert abs(m.sum() + h["cls_self"] - 1) < 1e-5, "[CLS] attention over all tokens sums to 1"


def test_results_are_standard_json(result):
    text = json.dumps(result, allow_nan=False)
    assert "NaN" not in text and "Infinity" not in text


# Regions ------------------------------------------------------------------------------------------
def test_region_from_spec_is_identity_when_sizes_match(model, pair):
    spec = {"box": list(pair[2].box), "decisive_frame": pair[2].decisive_frame}
    r = analysis.region_from_spec(model, spec, list(range(model.cfg.num_frames)), model.cfg.image_size)
    top, left, bottom, right = pair[2].box
    assert r.box == (left, top, right, bottom) and r.frames == (pair[2].decisive_frame, model.cfg.num_frames)
    assert r.positions == tuple(model.grid.positions(frames=range(*r.frames), box=r.box).tolist())


def test_region_from_spec_follows_resize_and_crop(model):
    # a 64x96 source resized (shortest edge 32 -> 32x48) and centre-cropped to 32x32: x shifts by 8
    spec = {"box": [10, 40, 30, 70], "decisive_frame": 0}
    r = analysis.region_from_spec(model, spec, list(range(8)), (64, 96))
    assert r.box == (12, 5, 27, 15)


def test_region_from_difference_finds_the_outcome(model, pair, region):
    r = analysis.region_from_difference(model, pair[0], pair[1])
    assert set(r.positions) <= set(region.positions) | set(
        model.grid.positions(frames=range(region.frames[0], model.cfg.num_frames)).tolist())
    with pytest.raises(analysis.PairError, match="identical"):
        analysis.region_from_difference(model, pair[0], pair[0])


def test_bad_region_is_a_pair_error(model):
    with pytest.raises(analysis.PairError, match="x0"):
        analysis.Region.from_box(model, (10, 10, 5, 20), (0, 8))
    with pytest.raises(analysis.PairError, match="frames"):
        analysis.Region.from_box(model, (0, 0, 8, 8), (4, 99))


def test_resolve_class(model):
    assert analysis.resolve_class(model, "golf_putt") == 1
    assert analysis.resolve_class(model, "2") == 2 and analysis.resolve_class(model, None) is None
    with pytest.raises(KeyError, match="did you mean 'bowling'"):
        analysis.resolve_class(model, "bowlin")
    with pytest.raises(KeyError, match="out of range"):
        analysis.resolve_class(model, "17")


# Loading pairs ------------------------------------------------------------------------------------
def test_load_pair_reads_the_spec_region(model, tmp_path):
    spec = synthetic.write_pair(tmp_path, "golf_putt", seed=1, frames=8, size=32)
    p = analysis.load_pair(model, tmp_path / "clean.mp4", tmp_path / "corrupt.mp4")
    clean, corrupt, _ = synthetic.render_pair("golf_putt", 1, frames=8, size=32)
    assert max_diff(p.clean, video.preprocess(clean, model.processor)) < 1e-6, "lossless files decode to the render"
    top, left, bottom, right = spec.box
    assert p.region.box == (left, top, right, bottom) and p.region.source.startswith("spec.json")


def test_load_pair_errors(model, tmp_path):
    synthetic.write_pair(tmp_path / "a", "bowling", seed=1, frames=8, size=32)
    synthetic.write_pair(tmp_path / "long", "bowling", seed=1, frames=12, size=32)
    synthetic.write_pair(tmp_path / "big", "bowling", seed=1, frames=8, size=48)
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)
    a = tmp_path / "a"
    cases = [(tmp_path / "missing.mp4", "clean video"), (tmp_path / "junk.mp4", "clean video")]
    for path, msg in cases:
        with pytest.raises(analysis.PairError, match=msg):
            analysis.load_pair(model, path, a / "corrupt.mp4")
    with pytest.raises(analysis.PairError, match="length"):
        analysis.load_pair(model, a / "clean.mp4", tmp_path / "long" / "corrupt.mp4")
    with pytest.raises(analysis.PairError, match="frame size"):
        analysis.load_pair(model, a / "clean.mp4", tmp_path / "big" / "corrupt.mp4")


def test_display_frames_invert_the_processor(model):
    clean, _, _ = synthetic.render_pair("bowling", 0, frames=8, size=32)
    frames = analysis.display_frames(video.preprocess(clean, model.processor), model.processor)
    assert frames.dtype == np.uint8 and np.abs(frames.astype(int) - clean.astype(int)).max() <= 1


# Bootstrap and study ------------------------------------------------------------------------------
def test_bootstrap_ci_is_the_percentile_bootstrap():
    v = np.random.default_rng(5).normal(3, 2, size=(30, 2))
    ci = analysis.bootstrap_ci(v, n_boot=500, seed=7)
    idx = np.random.default_rng(7).integers(0, 30, size=(500, 30))
    means = v[idx].mean(1)
    np.testing.assert_allclose(ci["mean"], v.mean(0))
    np.testing.assert_allclose(ci["lo"], np.quantile(means, 0.025, axis=0))
    np.testing.assert_allclose(ci["hi"], np.quantile(means, 0.975, axis=0))
    assert np.all(ci["lo"] < ci["mean"]) and np.all(ci["mean"] < ci["hi"])
    one = analysis.bootstrap_ci([[1.0, 2.0]])
    assert one["n"] == 1 and list(one["lo"]) == [1.0, 2.0]


def test_study_aggregates_per_pair_analyses(model):
    pairs = {a: analysis.generate_pairs(model, a, 2, seed=10) for a in ("bowling", "golf_putt")}
    st = analysis.jsonable(analysis.study(model, pairs, n_boot=200, progress=False))
    assert set(st["domains"]) == {"bowling", "golf_putt"}
    for dom, d in st["domains"].items():
        assert d["n"] == 2 and len(d["per_pair"]) == 2
        mlp = np.asarray([row["mlp_recovery"] for row in d["per_pair"]])
        np.testing.assert_allclose(d["ci"]["mlp_recovery"]["mean"], mlp.mean(0), atol=1e-9)
        assert np.all(np.asarray(d["ci"]["mlp_recovery"]["lo"]) <= mlp.mean(0) + 1e-9)
        np.testing.assert_allclose(d["ci"]["mlp_recovery"]["fraction_ge_100"], (mlp >= 100).mean(0))
        # one pair's row is that pair's own analysis
        p = pairs[dom][1]
        r = analysis.analyze_pair(model, p.clean, p.corrupt, region=p.region, steps=("patching", "ablation"),
                                  progress=False)  # fmt: skip
        np.testing.assert_allclose(d["per_pair"][1]["attention_recovery"], r["patching"]["attention"], atol=1e-6)
        assert abs(d["per_pair"][1]["ablation_pixels_change"] - r["ablation"]["pixels"]["class_change"]) < 1e-6
        probe = st["probe"][dom]
        assert len(probe["records"]) == model.cfg.n_layers and probe["n_pairs"] == 2 and probe["k"] == 2
        assert all(r["n"] == 4 and r["test_lo"] <= r["test"] <= r["test_hi"] for r in probe["records"])
        assert "split" in probe and probe["best"] in probe["records"]
        hid = d["hidden"]
        assert hid["n_pairs"] == 2 and 0 <= hid["same_top1_fraction"] <= 1
    assert set(st["transfer"]) == {"bowling->golf_putt", "golf_putt->bowling"}
    assert any("probe" in w for w in st["warnings"]), "two pairs are far too few for a probe CI: warned"
    json.dumps(st, allow_nan=False)


def test_generate_pairs_are_minimal_pairs_at_the_model_size(model):
    (p,) = analysis.generate_pairs(model, "bowling", 1, seed=4)
    assert p.clean.shape == p.corrupt.shape == (1, 8, 3, 32, 32)
    d = p.meta["spec"]["decisive_frame"]
    assert max_diff(p.clean[:, :d], p.corrupt[:, :d]) == 0 and max_diff(p.clean, p.corrupt) > 0
    with pytest.raises(analysis.PairError, match="unknown action"):
        analysis.generate_pairs(model, "curling", 1)


# Figures and report -------------------------------------------------------------------------------
def _texts(fig) -> list[str]:
    out = []
    for ax in fig.axes:
        out += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
    return [t for t in out if t]


def test_figures_have_titles_labels_and_units(model, pair, result):
    from vivit_lens import plots

    frames = analysis.display_frames(pair[0], model.processor)
    figs = plots.analysis_figures(result, frames, model.cfg.tubelet_size)
    assert {"delta_cascade", "dla_tokens", "cls_attention", "ablation", "recovery", "head_patching", "paths_direct",
            "paths_into_mlps", "attribution"} <= set(figs)  # fmt: skip
    assert any("%" in t for t in _texts(figs["recovery"])), "recovery axis in percent"
    assert any("logit" in t for t in _texts(figs["dla_tokens"])), "DLA colourbar in logits"
    for name, fig in figs.items():
        assert fig.axes and any(_texts(fig)) or fig._suptitle is not None, name
        png = plots.to_png(fig, dpi=40)
        assert png[:8] == b"\x89PNG\r\n\x1a\n", name


def test_report_is_self_contained(tmp_path, model, pair, result):
    from vivit_lens import report

    res = dict(result, meta=analysis.provenance(model, "test-model"), definitions=analysis.definitions("analysis"))
    paths = report.write_analysis(res, tmp_path, frames=analysis.display_frames(pair[0], model.processor))
    html = paths["report"].read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", html, re.I)
    imgs = re.findall(r"<img[^>]*src='([^']*)'", html)
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    assert "<link" not in html.lower() and not re.search(r"<script[^>]+src=", html, re.I)
    for heading in ("Top predictions", "Activation delta", "Direct logit attribution", "[CLS] attention",
                    "Region ablation", "Table 2", "Path patching", "Attribution vs exact"):  # fmt: skip
        assert heading in html, heading
    saved = json.loads(paths["results"].read_text())
    assert saved["patching"]["mlp"] == result["patching"]["mlp"]
    assert math.isclose(saved["predictions"]["clean"][0]["logit"], result["predictions"]["clean"][0]["logit"])
    assert sorted(p.name for p in paths["figures"].iterdir()) == sorted(
        f"{n}.png" for n in ("delta_cascade", "dla_tokens", "dla_components", "cls_attention", "ablation", "recovery",
                             "head_patching", "paths_direct", "paths_into_mlps", "circuit", "attribution"))  # fmt: skip
