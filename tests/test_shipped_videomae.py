"""The VideoMAE shipped beside the ViViT: the same world, the same recipe, the same promises of the files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import vivit_lens
from tests.conftest import max_diff
from tests.test_shipped_model import DOMAINS, FRESH_CLIPS, FRESH_SEED, OUTCOME_SEED, training_scenes_measured
from vivit_lens import HookedVideoMAE, analysis, assets, synthetic, video
from vivit_lens.cli import main
from vivit_lens.train import TrainConfig, evaluate, heldout_clips

HIDDEN_PAIRS = 50  # per domain, fresh


@pytest.fixture(scope="module")
def model():
    return HookedVideoMAE.from_pretrained(assets.tiny_model_path("tiny_videomae"))


@pytest.fixture(scope="module")
def record():
    return json.loads((assets.tiny_model_path("tiny_videomae") / "training.json").read_text())


def test_architecture_and_size(model):
    cfg = model.cfg
    assert (cfg.n_layers, cfg.n_heads, cfg.num_frames, cfg.d_model) == (6, 4, 16, 64) and cfg.use_mean_pooling
    assert not hasattr(model.embed, "cls_token") and model.readout_positions == tuple(range(cfg.n_pos))
    assert [cfg.id2label[i] for i in range(cfg.n_classes)] == list(synthetic.LABELS)
    folder = assets.tiny_model_path("tiny_videomae")
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 10 * 2**20, f"the shipped VideoMAE folder is {size / 2**20:.1f} MiB"
    assert isinstance(vivit_lens.from_pretrained(folder), HookedVideoMAE)  # picked by the checkpoint's model_type


def test_the_recipe_is_the_vivits(record):
    """Every stage of the VideoMAE's training has the ViViT's settings, but the architecture (and the thread count)."""
    vivit = json.loads((assets.tiny_model_path() / "training.json").read_text())

    def stages(r):
        return [s["train_config"] for s in [*r.get("earlier_stages", []), r]]

    ours, theirs = stages(record), stages(vivit)
    defaults = dataclasses.asdict(TrainConfig())  # a setting an older record lacks was at its default (off)
    assert len(ours) == len(theirs) == 4
    for a, b in zip(ours, theirs):
        assert a["arch"] == "videomae" and b.get("arch", "vivit") == "vivit"
        skip = {"arch", "init_from", "change_weight", "change_cell", "event_setting", "threads"}
        keys = (a.keys() | b.keys()) - skip
        assert {k: a.get(k, defaults[k]) for k in keys} == {k: b.get(k, defaults[k]) for k in keys}
        assert (a["change_weight"], a["event_setting"]) == (b.get("change_weight", 0), b.get("event_setting", 0))
    assert record["heldout_accuracy"] >= 0.85


def test_transformers_loads_it_with_the_same_logits_and_pixels(model):
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessor

    folder = assets.tiny_model_path("tiny_videomae")
    hf = VideoMAEForVideoClassification.from_pretrained(folder).eval()
    processor = VideoMAEImageProcessor.from_pretrained(folder)
    clean, corrupt, _ = assets.pair_paths("bowling")
    frames = [video.load(p, num_frames=model.cfg.num_frames) for p in (clean, corrupt)]
    x = torch.cat([video.preprocess(f, model.processor) for f in frames])
    hf_x = torch.cat([processor(list(f.frames), return_tensors="pt").pixel_values for f in frames])
    assert max_diff(x, hf_x) < 1e-5
    with torch.no_grad():
        assert max_diff(model(x), hf(pixel_values=x).logits) < 1e-5


def test_heldout_accuracy_on_freshly_generated_clips(model):
    x, y = heldout_clips(FRESH_CLIPS, model.cfg.num_frames, model.cfg.image_size[0], start=FRESH_SEED)
    accuracy, _ = evaluate(model, x, y, model.processor)
    print(f"\nshipped VideoMAE: held-out accuracy {accuracy:.4f} ({FRESH_CLIPS} fresh clips)")
    assert accuracy >= 0.85


@pytest.mark.parametrize("action", DOMAINS)
def test_the_outcome_is_hidden_from_the_label(model, action):
    pairs = analysis.generate_pairs(model, action, HIDDEN_PAIRS, seed=OUTCOME_SEED)
    with torch.no_grad():
        top = torch.cat([model(torch.cat([p.clean, p.corrupt])).argmax(-1) for p in pairs])
    same = float((top[0::2] == top[1::2]).double().mean())
    accuracy = float((top == model.label_id(action)).double().mean())
    print(f"\n{action}: same top-1 on {same:.3f} of {HIDDEN_PAIRS} pairs, action accuracy {accuracy:.3f}")
    assert same >= 0.95 and accuracy >= 0.95  # issue 10's target; measured 1.000 on both


PROBE_PAIRS = 100  # per domain, fresh


@pytest.mark.parametrize("action", [
    "bowling",
    pytest.param("golf_putt", marks=pytest.mark.xfail(strict=True, reason=(
        "target not reached: the shipped VideoMAE reads the golf outcome at 0.59 [0.56, 0.62] (200 pairs)"))),
])
def test_the_outcome_is_present_in_the_token_mean(model, action):
    """Grouped 5-fold probes on the mean over tokens after every block (what the VideoMAE's classifier reads), taken
    with plain forward hooks. The two-stage VideoMAE read the bowling outcome at 0.74 [0.71, 0.78] (200 pairs), this
    one at 0.88 [0.85, 0.91]: 0.8 fails the earlier model."""
    from vivit_lens.probes import grouped_cv_probes

    pairs = analysis.generate_pairs(model, action, PROBE_PAIRS, seed=OUTCOME_SEED)
    grabbed: dict[int, list[torch.Tensor]] = {l: [] for l in range(len(model.blocks))}
    handles = [block.register_forward_hook(lambda m, i, o, l=l: grabbed[l].append(o.mean(1)))
               for l, block in enumerate(model.blocks)]
    try:
        with torch.no_grad():
            for p in pairs:
                model(torch.cat([p.clean, p.corrupt]))
    finally:
        for h in handles:
            h.remove()
    acts = torch.stack([torch.cat(grabbed[l]) for l in range(len(model.blocks))])
    labels, groups = torch.tensor([1, 0] * PROBE_PAIRS), torch.arange(PROBE_PAIRS).repeat_interleave(2)
    recs = grouped_cv_probes(acts, labels, groups, k=5, n_boot=500)
    best = max(recs, key=lambda r: r["test"])
    print(f"\n{action}: outcome probe by layer {[round(r['test'], 3) for r in recs]}, control {best['control']:.3f}")
    assert best["test"] >= 0.8 and best["control"] <= 0.6


def test_measurement_pairs_never_reuse_a_training_scene(record):
    assert not training_scenes_measured(record)


@pytest.mark.slow
def test_study_and_analyze_run_on_it_by_name(tmp_path):
    """`--model tiny_videomae` names the shipped VideoMAE on both commands; the signal is read at its readout."""
    assert main(["study", "--model", "tiny_videomae", "--pairs", "2", "--probe-pairs", "4", "--bootstrap", "50",
                 "--out", str(tmp_path / "s"), "--quiet"]) == 0  # fmt: skip
    st = json.loads((tmp_path / "s" / "results.json").read_text())
    assert st["meta"]["model"]["architecture"] == "VideoMAEForVideoClassification"
    assert st["signal"]["positions"] == "readout" and set(st["domains"]) == set(DOMAINS)
    page = (tmp_path / "s" / "report.html").read_text()  # the report names the readout, not a [CLS] it lacks
    assert "readout (token mean) attention on the outcome region" in page and "present in the readout (token mean)" in page
    assert "[CLS] attention on the outcome region" not in page and "present in [CLS]" not in page
    assert main(["analyze", "--model", "tiny_videomae", "--out", str(tmp_path / "a"), "--quiet"]) == 0
    res = json.loads((tmp_path / "a" / "results.json").read_text())
    assert res["signal"]["positions"] == "readout" and np.isfinite(res["patching"]["attention"]).all()
    page = (tmp_path / "a" / "report.html").read_text()  # the single-pair report and its views name it too
    assert "readout (token mean) attention" in page and "[CLS] attention" not in page
    assert '"readout":"readout (token mean)"' in page  # the views' data: the scrubber's and head map's labels
