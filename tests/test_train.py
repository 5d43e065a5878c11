"""vivit_lens.train: seeded and reproducible, learns, and writes a folder that transformers loads to the same logits."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import max_diff
from vivit_lens import HookedViViT, synthetic
from vivit_lens.train import HELDOUT_SEED, TrainConfig, heldout_clips, lr_at, main, to_pixels, train

TINY = dict(frames=8, size=32, tubelet=(2, 16, 16), hidden=32, layers=2, heads=2, batch_size=8, n_eval=0,
            probe_pairs=0, event_steps=0, progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def data():
    return synthetic.dataset(48, seed=3, frames=8, size=32)


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_same_seed_same_weights_other_seed_other_weights(data):
    a = train(TrainConfig(seed=1, steps=4, **TINY), data=data).model
    b = train(TrainConfig(seed=1, steps=4, **TINY), data=data).model
    c = train(TrainConfig(seed=2, steps=4, **TINY), data=data).model
    sa, sb, sc = _state(a), _state(b), _state(c)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), "the same seed must give bit-identical weights"
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)


def test_training_lowers_the_loss_on_the_training_clips(data):
    res = train(TrainConfig(seed=0, steps=40, lr=3e-3, warmup=5, **TINY), data=(data[0][:8], data[1][:8]))
    assert np.mean(res.losses[-5:]) < 0.5 * np.mean(res.losses[:5]), res.losses


def test_lr_schedule_warms_up_then_decays_to_min_lr():
    tc = TrainConfig(steps=100, warmup=10, lr=1e-3, min_lr=1e-5)
    lrs = [lr_at(s, tc) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4)
    assert all(x >= y for x, y in zip(lrs[9:], lrs[10:])) and lrs[-1] == pytest.approx(1e-5)


def test_heldout_seeds_are_outside_the_training_range():
    n = len(synthetic.LABELS)
    x, y = heldout_clips(n, frames=8, size=32)
    assert x.shape == (n, 8, 32, 32, 3) and list(y) == list(range(n))  # every class once, in turn
    first, _ = synthetic.render(synthetic.ACTIONS[0], HELDOUT_SEED, frames=8, size=32)
    assert np.array_equal(x[0], first)
    with pytest.raises(ValueError, match="held-out seeds"):
        heldout_clips(2, start=5)


def test_cli_writes_an_hf_folder_with_the_same_logits(tmp_path):
    from transformers import VivitForVideoClassification

    out = tmp_path / "m"
    assert main(["--out", str(out), "--steps", "2", "--n-train", "40", "--n-eval", "6", "--frames", "8", "--size",
                 "32", "--tubelet", "2", "16", "16", "--hidden", "32", "--layers", "2", "--heads", "2",
                 "--batch-size", "8", "--probe-pairs", "5", "--eval-every", "0", "--event-steps", "1", "--no-progress"]) == 0  # fmt: skip
    record = json.loads((out / "training.json").read_text())
    assert record["steps"] == 2 and record["heldout_clips"] == 6 and record["command"].startswith("vivit-lens train --out")
    ours = HookedViViT.from_pretrained(out)
    hf = VivitForVideoClassification.from_pretrained(out).eval()
    assert [hf.config.id2label[i] for i in range(len(synthetic.LABELS))] == list(synthetic.LABELS)
    probe = record["history"][-1]["outcome_probe_by_layer"]  # the measurement-only outcome monitor ran
    assert set(probe) == {"bowling", "golf_putt"} and all(len(v) == 2 for v in probe.values())
    assert record["n_parameters"] == sum(p.numel() for p in ours.parameters())
    x = to_pixels(synthetic.dataset(2, seed=9, frames=8, size=32)[0], ours.processor)
    with torch.no_grad():
        assert max_diff(ours(x), hf(pixel_values=x).logits) < 1e-5


def test_videomae_cli_writes_a_folder_transformers_loads_to_the_same_logits(tmp_path):
    """`--arch videomae`: no [CLS], fixed sinusoidal positions, mean pooling, ImageNet normalisation; the folder
    loads in transformers' VideoMAEForVideoClassification and gives our logits, and the monitor probes its readout."""
    from transformers import VideoMAEForVideoClassification, VideoMAEImageProcessor

    from vivit_lens import HookedVideoMAE

    out = tmp_path / "mae"
    assert main(["--out", str(out), "--arch", "videomae", "--steps", "3", "--n-train", "40", "--n-eval", "6",
                 "--frames", "8", "--size", "32", "--tubelet", "2", "16", "16", "--hidden", "32", "--layers", "2",
                 "--heads", "2", "--batch-size", "8", "--probe-pairs", "5", "--eval-every", "0", "--event-steps", "1",
                 "--change-weight", "1", "--no-progress"]) == 0  # fmt: skip
    ours = HookedVideoMAE.from_pretrained(out)
    assert ours.cfg.use_mean_pooling and not hasattr(ours.embed, "cls_token")
    hf = VideoMAEForVideoClassification.from_pretrained(out).eval()
    frames = synthetic.dataset(2, seed=9, frames=8, size=32)[0]
    hf_pixels = VideoMAEImageProcessor.from_pretrained(out)(list(frames), return_tensors="pt").pixel_values
    x = to_pixels(frames, ours.processor)
    assert max_diff(x, hf_pixels) < 1e-5  # ImageNet statistics, as the published VideoMAE checkpoints
    with torch.no_grad():
        assert max_diff(ours(x), hf(pixel_values=x).logits) < 1e-5
    record = json.loads((out / "training.json").read_text())
    assert record["train_config"]["arch"] == "videomae" and record["self_supervised_loss"].startswith("change_weight")
    assert all(len(v) == 2 for v in record["history"][-1]["outcome_probe_by_layer"].values())


def test_change_map_is_each_cells_colour_change_from_start_to_end():
    """`change_map` against a numpy loop: |mean of the last two frames - mean of the first two| per cell, summed
    over channels."""
    from vivit_lens.train import change_map

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 3, 16, 24)).astype(np.float32)
    want = np.zeros((2, 2, 3))
    for b in range(2):
        for r in range(2):
            for c in range(3):
                cell = x[b, :, :, 8 * r:8 * r + 8, 8 * c:8 * c + 8].mean((2, 3))  # [frames, channels]
                want[b, r, c] = np.abs(cell[-2:].mean(0) - cell[:2].mean(0)).sum()
    got = change_map(torch.from_numpy(x), cell=8)
    assert got.shape == (2, 6) and np.allclose(got.numpy(), want.reshape(2, 6), atol=1e-5)


def test_the_loss_sees_only_the_labels_dataset_gives(monkeypatch):
    """No outcome reaches the loss: every target `train` feeds to cross-entropy is a label `synthetic.dataset`
    returned, and for bowling / golf_putt clips that label is the action whatever the outcome."""
    import vivit_lens.train as tr

    made, real_dataset = {}, synthetic.dataset

    def dataset(n, seed, frames, size, **settings):
        made["x"], made["y"], made["specs"] = real_dataset(n, seed=seed, frames=frames, size=size, with_specs=True,
                                                           **settings)
        return made["x"], made["y"]

    seen = []
    real_ce = tr.F.cross_entropy

    def cross_entropy(logits, target, *a, **k):
        seen.append(target.clone())
        return real_ce(logits, target, *a, **k)

    monkeypatch.setattr(tr.synthetic, "dataset", dataset)
    monkeypatch.setattr(tr.F, "cross_entropy", cross_entropy)
    tr.train(TrainConfig(seed=0, steps=6, n_train=24, **TINY))
    labels = set(made["y"].tolist())
    assert seen and all(set(t.tolist()) <= labels for t in seen)
    for spec, label in zip(made["specs"], made["y"].tolist()):
        if spec.action in ("bowling", "golf_putt"):
            assert synthetic.LABELS[label] == spec.action


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="attention"):
        TrainConfig(attention="fast")
    with pytest.raises(ValueError, match="arch"):
        TrainConfig(arch="timesformer")
    with pytest.raises(ValueError, match="change_cell"):
        TrainConfig(change_weight=1.0, change_cell=7)
    with pytest.raises(ValueError, match="event_setting"):
        TrainConfig(event_setting=2.0)
    with pytest.raises(ValueError, match="putt_marbles"):
        TrainConfig(putt_marbles=-0.5)
    for bad, match in (({"lr": -1.0}, "lr must be > 0"), ({"lr": float("nan")}, "lr must be > 0"),
                       ({"min_lr": 1.0}, "min_lr in"), ({"warmup": -3}, "warmup"), ({"threads": 0}, "threads"),
                       ({"probe_pairs": 3}, "probe_pairs"), ({"n_eval": -1}, "n_eval"),
                       ({"steps": 0}, "got steps 0, batch_size 16 and n_train 10000")):
        with pytest.raises(ValueError, match=match):  # before any rendering: AdamW would refuse lr < 0 only later
            TrainConfig(**bad)
    with pytest.raises(ValueError, match="smaller than one batch"):
        train(TrainConfig(steps=1, **{**TINY, "batch_size": 64}), data=synthetic.dataset(6, seed=0, frames=8, size=32))


def test_cli_errors_are_one_line_before_any_rendering(tmp_path, capsys):
    """Bad settings and a missing --init-from end in one line and exit code 2, before clips are rendered."""
    assert main(["--out", str(tmp_path / "a"), "--steps", "0"]) == 2
    assert main(["--out", str(tmp_path / "b"), "--init-from", str(tmp_path / "none"), "--n-train", "10000000"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("vivit-lens train: error: ") for line in err), err
    assert "Traceback" not in "\n".join(err) and not (tmp_path / "a").exists()


def test_cli_train_output_is_atomic(tmp_path, capsys, monkeypatch):
    """`vivit-lens train`: a non-empty --out is refused before any rendering; a run that fails midway leaves
    neither the folder nor a partial sibling behind."""
    import vivit_lens.train as tr
    from vivit_lens.study.cli import main as cli_main

    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("x")
    assert cli_main(["train", "--out", str(full), "--steps", "1"]) == 2
    assert "--overwrite" in capsys.readouterr().err and sorted(p.name for p in full.iterdir()) == ["keep.txt"]

    def broken(tc, data=None):
        raise ValueError("the training set (3 clips) is smaller than one batch (16)")

    monkeypatch.setattr(tr, "train", broken)
    assert cli_main(["train", "--out", str(tmp_path / "new"), "--steps", "1", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["vivit-lens train: error: the training set (3 clips) is smaller than one batch (16)"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_train_arguments_read_both_spellings_of_a_training_command():
    from vivit_lens.train import recipe_arguments, train_arguments

    line = "python -m vivit_lens.train --out s1 --seed 0 --no-progress"
    assert train_arguments(line) == ["--out", "s1", "--seed", "0"]
    assert train_arguments("vivit-lens train --out 'a b' --lr 1e-3") == ["--out", "a b", "--lr", "1e-3"]
    assert train_arguments("python -m vivit_lens.assets   # the shipped pairs") is None
    record = {"recipe": {"commands": ["vivit-lens train --out s1", "python benchmarks/x.py --record",
                                      "python -m vivit_lens.train --out s2 --init-from s1  # stage 2"]}}
    assert recipe_arguments(record) == [["--out", "s1"], ["--out", "s2", "--init-from", "s1"]]
