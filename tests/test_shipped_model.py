"""The model and minimal pairs shipped inside the package: what the issue promises of them, checked on the files."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import max_diff
from vivit_lens import HookedViViT, analysis, assets, synthetic, video
from vivit_lens.probes import grouped_cv_probes
from vivit_lens.train import (HELDOUT_SEED, MONITOR_SEED, evaluate, heldout_clips, recipe_arguments,
                              train_arguments)

FRESH_SEED = HELDOUT_SEED + 1_000_000  # neither a training clip nor one of training.json's held-out clips
FRESH_CLIPS = 240
OUTCOME_SEED = HELDOUT_SEED + 3_000_000  # fresh pairs: no training clip, held-out clip or monitor pair
OUTCOME_PAIRS = 100  # per domain; the 200-pair figures are in training.json and benchmarks/results/outcome_world.json
DOMAINS = ("bowling", "golf_putt")


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_pretrained(assets.tiny_model_path())


@pytest.fixture(scope="module")
def record():
    return json.loads((assets.tiny_model_path() / "training.json").read_text())


def test_architecture_and_size(model):
    cfg = model.cfg
    assert cfg.n_layers >= 6 and cfg.n_heads >= 4 and cfg.num_frames >= 16
    assert [cfg.id2label[i] for i in range(cfg.n_classes)] == list(synthetic.LABELS)
    folder = assets.tiny_model_path()
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "training.json"} <= {
        p.name for p in folder.iterdir()}
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 10 * 2**20, f"the shipped model folder is {size / 2**20:.1f} MiB"


def test_training_record(model, record):
    assert record["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert record["heldout_accuracy"] >= 0.85  # all ten classes; the event classes are the hard ones
    assert train_arguments(record["command"]) is not None  # python -m vivit_lens.train ... or vivit-lens train ...
    tc = record["train_config"]
    assert (tc["frames"], tc["size"], tc["layers"], tc["heads"]) == (
        model.cfg.num_frames, model.cfg.image_size[0], model.cfg.n_layers, model.cfg.n_heads)


RECIPE_RERUN = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "recipe_rerun.json"


def test_training_fits_in_an_hour(record):
    assert record["total_wall_seconds"] <= 60 * 60  # every stage of the recipe, as recorded
    assert record["total_wall_seconds"] == pytest.approx(
        sum(st["wall_seconds"] for st in [*record["earlier_stages"], record]), abs=0.2)


def test_the_shipped_weights_are_the_timed_rerun_of_the_recipe(record):
    """benchmarks/rerun_recipe.py's record: the recipe's training commands as training.json lists them, settings as
    shipped, and its last stage's weights are the shipped file (sha256); the weights shipped before it, from the same
    commands on another CPU, were not (float rounding: benchmarks/RESULTS.md)."""
    import hashlib

    rerun = json.loads(RECIPE_RERUN.read_text())
    recipe = recipe_arguments(record)
    assert [train_arguments(s["command"]) for s in rerun["stages"]] == recipe and len(recipe) == 4
    assert [train_arguments(s["command"]) for s in [*record["earlier_stages"], record]] == recipe
    assert all(s["train_config_as_shipped"] for s in rerun["stages"])
    digest = hashlib.sha256((assets.tiny_model_path() / "model.safetensors").read_bytes()).hexdigest()
    assert rerun["final_weights"]["sha256"] == digest != rerun["final_weights"]["shipped_sha256"]
    assert [s["wall_seconds"] for s in rerun["stages"]] == [
        s["wall_seconds"] for s in [*record["earlier_stages"], record]]


SECOND_TRAINING = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "second_training.json"


def test_the_second_training_ran_the_shipped_recipe_with_other_seeds(record):
    """benchmarks/RESULTS.md compares the shipped model with a second training: every stage's settings are the shipped
    stage's (a setting the older records lack is at its default, off), only the seeds (and folders) differ, and its
    training scenes never meet a measurement pair either."""
    from vivit_lens.train import TrainConfig

    second = json.loads(SECOND_TRAINING.read_text())
    defaults = dataclasses.asdict(TrainConfig())
    stages = [*record["earlier_stages"], record]
    others = [*second["earlier_stages"], second]
    assert len(stages) == len(others) == 4
    for ours, theirs in zip(stages, others):
        a, b = ours["train_config"], theirs["train_config"]
        assert {k: a.get(k, defaults[k]) for k in b if k not in ("seed", "init_from")} == \
            {k: v for k, v in b.items() if k not in ("seed", "init_from")}
        assert a["seed"] != b["seed"] and bool(a["init_from"]) == bool(b["init_from"])
    assert not training_scenes_measured(second)
    assert second["total_wall_seconds"] == pytest.approx(sum(st["wall_seconds"] for st in others), abs=0.2)


def test_heldout_accuracy_on_freshly_generated_clips(model):
    x, y = heldout_clips(FRESH_CLIPS, model.cfg.num_frames, model.cfg.image_size[0], start=FRESH_SEED)
    accuracy, loss = evaluate(model, x, y, model.processor)
    with torch.no_grad():
        top = torch.cat([model(video.preprocess(b, model.processor)).argmax(-1) for b in np.array_split(x, 8)])
    per_class = {synthetic.LABELS[c]: float((top[y == c] == c).double().mean()) for c in np.unique(y)}
    print(f"\nshipped model: held-out accuracy {accuracy:.4f} ({FRESH_CLIPS} fresh clips), cross-entropy {loss:.4f}; "
          f"per class {per_class}")
    assert accuracy >= 0.85  # all ten classes; measured 0.9625, the skittles and marble classes lowest (0.83-1.00)
    assert all(per_class[a] >= 0.95 for a in synthetic.ACTIONS if a not in synthetic.EVENT_SCENES), per_class


def test_transformers_loads_it_with_the_same_logits(model):
    from transformers import VivitForVideoClassification

    hf = VivitForVideoClassification.from_pretrained(assets.tiny_model_path()).eval()
    clean, corrupt, _ = assets.pair_paths("bowling")
    x = torch.cat([video.preprocess(video.load(p, num_frames=model.cfg.num_frames), model.processor)
                   for p in (clean, corrupt)])  # fmt: skip
    with torch.no_grad():
        assert max_diff(model(x), hf(pixel_values=x).logits) < 1e-5


@pytest.mark.parametrize("action", ["bowling", "golf_putt"])
def test_shipped_pairs_are_minimal_pairs_the_model_classifies(model, action):
    assert action in assets.pairs()
    clean_path, corrupt_path, spec_path = assets.pair_paths(action)
    spec = json.loads(spec_path.read_text())
    clean, corrupt = (video.load(p) for p in (clean_path, corrupt_path))
    rendered = synthetic.render_pair(action, spec["seed"], spec["frames"], (spec["height"], spec["width"]))
    np.testing.assert_array_equal(clean.frames, rendered[0])  # the files are the seed's render, bit-exact
    np.testing.assert_array_equal(corrupt.frames, rendered[1])
    d = spec["decisive_frame"]
    assert np.array_equal(clean.frames[:d], corrupt.frames[:d]) and not np.array_equal(clean.frames[d:],
                                                                                        corrupt.frames[d:])
    x = torch.cat([video.preprocess(c, model.processor) for c in (clean, corrupt)])
    with torch.no_grad():
        top = model(x).argmax(-1).tolist()
    assert [model.cfg.id2label[i] for i in top] == [action, action], "both outcomes are the same action"


def test_unknown_pair_is_refused():
    with pytest.raises(ValueError, match="no shipped minimal pair"):
        assets.pair_paths("curling")


def test_write_pairs_reproduces_the_shipped_pairs(tmp_path):
    """`python -m vivit_lens.assets` picks the same seeds and writes the same frames as the shipped files."""
    seeds = assets.write_pairs(out=tmp_path)
    for action, seed in seeds.items():
        shipped = json.loads(assets.pair_paths(action)[2].read_text())
        assert json.loads((tmp_path / action / "spec.json").read_text()) == shipped and shipped["seed"] == seed
        for name in ("clean.mp4", "corrupt.mp4"):
            ours = video.load(tmp_path / action / name).frames
            np.testing.assert_array_equal(ours, video.load(assets.pair_paths(action)[0].parent / name).frames)


@pytest.fixture(scope="module")
def outcome_runs(model):
    """Per domain: the [CLS] residual after every block `[layer 2n d]` (read by a plain forward hook on each
    block, not through the cache) and the top-1 class `[2n]` of the clean and corrupt clip of fresh pairs."""
    out = {}
    for action in DOMAINS:
        pairs = analysis.generate_pairs(model, action, OUTCOME_PAIRS, seed=OUTCOME_SEED)
        x = torch.cat([torch.cat([p.clean, p.corrupt]) for p in pairs])
        grabbed = {}
        handles = [block.register_forward_hook(lambda m, i, o, l=l: grabbed.__setitem__(l, o[:, 0].clone()))
                   for l, block in enumerate(model.blocks)]
        try:
            with torch.no_grad():
                top = torch.cat([model(b).argmax(-1) for b in x.split(16)])
                cls = [[] for _ in model.blocks]
                for b in x.split(16):
                    model(b)
                    for l in range(len(cls)):
                        cls[l].append(grabbed[l])
        finally:
            for h in handles:
                h.remove()
        out[action] = (torch.stack([torch.cat(c) for c in cls]), top)
    return out


@pytest.mark.parametrize("action", DOMAINS)
def test_the_outcome_is_hidden_from_the_label(model, outcome_runs, action):
    _, top = outcome_runs[action]
    same = float((top[0::2] == top[1::2]).double().mean())
    accuracy = float((top == model.label_id(action)).double().mean())
    print(f"\n{action}: same top-1 on {same:.3f} of {OUTCOME_PAIRS} pairs, action accuracy {accuracy:.3f}")
    assert same >= 0.95 and accuracy >= 0.95  # issue 10's target; measured 1.000 on both (the third stage alone: 0.87)


@pytest.mark.parametrize("action", [
    "bowling",
    pytest.param("golf_putt", marks=pytest.mark.xfail(strict=True, reason=(
        "target not reached: the shipped model reads the golf outcome at 0.58 [0.555, 0.613] (200 pairs): it tells "
        "sunk from passed marbles (0.92-1.00 of 24 fresh clips each), but what sees that does not fire inside golf "
        "clips"))),
])
def test_the_outcome_is_present_in_the_cls_residual(outcome_runs, action):
    """Grouped 5-fold probes over fresh pairs. The model before the outcome world never computed the outcome
    (0.48-0.58 on 100 pairs), the two-stage model read the bowling outcome at 0.64 [0.60, 0.67] (200 pairs); this
    one, after the third and fourth stages, at 0.85 [0.82, 0.88] on 200 pairs (issue 10's target 0.85: at it within
    the CI, 0.002 below it as a point estimate) and 0.875 on these 100. 0.8 fails every earlier model."""
    acts, _ = outcome_runs[action]
    labels, groups = torch.tensor([1, 0] * OUTCOME_PAIRS), torch.arange(OUTCOME_PAIRS).repeat_interleave(2)
    recs = grouped_cv_probes(acts, labels, groups, k=5, n_boot=500)
    best = max(recs, key=lambda r: r["test"])
    print(f"\n{action}: outcome probe by layer {[round(r['test'], 3) for r in recs]}, control at the best layer "
          f"{best['control']:.3f}")
    assert best["test"] >= 0.8 and best["control"] <= 0.6


def _cls_attention_on_region(model, action: str) -> tuple[torch.Tensor, float]:
    """[CLS] attention mass of every head `[layer head]` on the outcome box of the shipped pair's clean clip, read off
    `hook_pattern` with a plain hook, as a multiple of the uniform share; and the ceiling 1 / share (a head that
    attends to nothing else)."""
    pair = analysis.load_pair(model, *assets.pair_paths(action)[:2])
    positions = torch.tensor(pair.region.positions)
    patterns = {}
    hooks = [(f"blocks.{l}.attn.hook_pattern", lambda t, hook: patterns.__setitem__(hook.name, t[0, :, 0].clone()))
             for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        model.run_with_hooks(pair.clean, fwd_hooks=hooks)
    share = len(positions) / model.cfg.n_pos
    return torch.stack([patterns[n][:, positions].sum(-1) for n, _ in hooks]) / share, 1 / share


def test_a_head_attends_to_the_outcome_region_of_the_golf_pair(model):
    """Some head puts at least 3x the uniform share of its [CLS] attention on the golf pair's outcome box."""
    ratio, ceiling = _cls_attention_on_region(model, "golf_putt")
    l, h = divmod(int(ratio.argmax()), model.cfg.n_heads)
    print(f"\ngolf_putt: L{l}H{h} puts {float(ratio.max()):.2f}x the uniform share on the outcome box (ceiling {ceiling:.2f}x)")
    assert float(ratio.max()) >= 3


def test_the_bowling_pairs_outcome_box_is_too_large_for_3x(model):
    """The bowling pair's box (pins, ball and gutter) covers 42% of the tokens, so no head can reach 3x the uniform
    share there (the README says so rather than claiming the target): the ceiling, and where the best head stands."""
    ratio, ceiling = _cls_attention_on_region(model, "bowling")
    print(f"\nbowling: best head {float(ratio.max()):.2f}x the uniform share, ceiling {ceiling:.2f}x")
    assert ceiling < 3 and float(ratio.max()) <= ceiling + 1e-4


def training_scenes_measured(record: dict) -> set:
    """The (action, seed) scenes that both a training stage of `record` and a measurement use: the study's default
    pairs (seeds 0..199), the tests' pairs and the monitor's pairs."""
    used = set()
    for stage in [record, *record.get("earlier_stages", [])]:
        tc = stage["train_config"]
        used |= {(a, s) for a, _, s in synthetic.dataset_plan(tc["n_train"], tc["seed"])}
    measured = {(a, s) for a in DOMAINS for s in [*range(200), *range(OUTCOME_SEED, OUTCOME_SEED + 200),
                                                   *range(MONITOR_SEED, MONITOR_SEED + 200)]}  # fmt: skip
    return used & measured


def test_measurement_pairs_never_reuse_a_training_scene(record):
    assert not training_scenes_measured(record)
