"""The model and minimal pairs shipped inside the package: what the issue promises of them, checked on the files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import max_diff
from vivit_lens import HookedViViT, assets, synthetic, video
from vivit_lens.train import HELDOUT_SEED, evaluate, heldout_clips

FRESH_SEED = HELDOUT_SEED + 1_000_000  # neither a training clip nor one of training.json's held-out clips
FRESH_CLIPS = 240


@pytest.fixture(scope="module")
def model():
    return HookedViViT.from_pretrained(assets.tiny_model_path())


@pytest.fixture(scope="module")
def record():
    return json.loads((assets.tiny_model_path() / "training.json").read_text())


def test_architecture_and_size(model):
    cfg = model.cfg
    assert cfg.n_layers >= 6 and cfg.n_heads >= 4 and cfg.num_frames >= 16
    assert [cfg.id2label[i] for i in range(cfg.n_classes)] == list(synthetic.ACTIONS)
    folder = assets.tiny_model_path()
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "training.json"} <= {
        p.name for p in folder.iterdir()}
    size = sum(p.stat().st_size for p in folder.iterdir())
    assert size < 10 * 2**20, f"the shipped model folder is {size / 2**20:.1f} MiB"


def test_training_record(model, record):
    assert record["n_parameters"] == sum(p.numel() for p in model.parameters())
    assert record["wall_seconds"] <= 30 * 60
    assert record["heldout_accuracy"] >= 0.95
    assert record["command"].startswith("python -m vivit_lens.train")
    tc = record["train_config"]
    assert (tc["frames"], tc["size"], tc["layers"], tc["heads"]) == (
        model.cfg.num_frames, model.cfg.image_size[0], model.cfg.n_layers, model.cfg.n_heads)


def test_heldout_accuracy_on_freshly_generated_clips(model):
    x, y = heldout_clips(FRESH_CLIPS, model.cfg.num_frames, model.cfg.image_size[0], start=FRESH_SEED)
    accuracy, loss = evaluate(model, x, y, model.processor)
    print(f"\nshipped model: held-out accuracy {accuracy:.4f} ({FRESH_CLIPS} fresh clips), cross-entropy {loss:.4f}")
    assert accuracy >= 0.95


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
