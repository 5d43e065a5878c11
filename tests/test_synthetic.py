"""Behaviour of the synthetic clip renderer: determinism, minimal pairs, labels, learnability."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vivit_lens import synthetic

SHAPES = [(16, 64), (4, 32), (8, (48, 80)), (32, 96)]  # (frames, size) the small models might use


def _motion_features(x: np.ndarray) -> np.ndarray:
    """Mean absolute frame difference (grey), pooled to 8x8 and standardised per clip."""
    g = x.astype(np.float32).mean(-1)
    m = np.abs(np.diff(g, axis=1)).mean(1)
    n, h, w = m.shape
    f = m.reshape(n, 8, h // 8, 8, w // 8).mean((2, 4)).reshape(n, -1)
    return (f - f.mean(1, keepdims=True)) / (f.std(1, keepdims=True) + 1e-6)


def _nearest_centroid_accuracy(f_train, y_train, f_test, y_test) -> float:
    centroids = np.stack([f_train[y_train == c].mean(0) for c in range(len(synthetic.LABELS))])
    pred = ((f_test[:, None] - centroids[None]) ** 2).sum(-1).argmin(1)
    return float((pred == y_test).mean())


def _ball_track(action: str, seed: int, frames: int = 16, size: int = 64):
    """The ball's centre per frame in both outcomes of one seed, and the decisive frame, as the scene draws it."""
    rng = np.random.default_rng([seed, synthetic.ACTIONS.index(action)])
    d = int(np.clip(round(rng.uniform(*synthetic.DECISIVE) * (frames - 1)), 2, frames - 2))
    u = np.arange(frames) / (frames - 1)
    scene = synthetic._SCENES[action](rng, synthetic._Time(frames, size, size, d, u, (d - 1) / (frames - 1)))
    return [scene.build(o)[-1].params[:2] for o in synthetic.OUTCOMES[action]], d


@pytest.mark.parametrize("action", ["golf_putt", "marble"])
def test_the_ball_rolls_toward_the_hole_before_the_branch(action):
    """Before the decisive frame the ball never moves away from the hole (where the holed ball ends), and a marble
    (drawn at up to 2x) covers a good part of the table: a 2x marble once started beside the hole and rolled away."""
    runs = []
    for seed in range(300):
        (holed, _), d = _ball_track(action, seed)
        dist = np.hypot(*(holed[:, :d] - holed[:, -1:]))
        assert np.all(np.diff(dist) <= 1e-6) or action == "golf_putt", (seed, dist)
        runs.append(dist[0] - dist[d - 1])
    if action == "marble":
        assert min(runs) >= 0.1 * 64, min(runs)
    else:  # the putt's spacing leaves a few balls barely rolling; never one rolling back more than a pixel
        assert min(runs) >= -1.0, min(runs)


@pytest.mark.parametrize("action", synthetic.ACTIONS)
def test_same_seed_same_bytes_other_seed_other_clip(action):
    outcome = synthetic.OUTCOMES[action][1]
    a, spec_a = synthetic.render(action, seed=7, outcome=outcome)
    b, spec_b = synthetic.render(action, seed=7, outcome=outcome)
    c, _ = synthetic.render(action, seed=8, outcome=outcome)
    assert a.tobytes() == b.tobytes() and spec_a == spec_b
    assert np.abs(a.astype(int) - c).mean() > 5, "another seed should change colours, layout and motion"


@pytest.mark.parametrize("action", synthetic.ACTIONS)
def test_render_of_one_outcome_is_that_half_of_the_pair(action):
    clean, corrupt, pair = synthetic.render_pair(action, seed=11, frames=12, size=48)
    for clip, outcome, label in ((clean, pair.clean_outcome, pair.label), (corrupt, pair.corrupt_outcome,
                                                                           pair.corrupt_label)):
        single, spec = synthetic.render(action, seed=11, outcome=outcome, frames=12, size=48)
        np.testing.assert_array_equal(single, clip)
        assert (spec.decisive_frame, spec.box, spec.label) == (pair.decisive_frame, pair.box, label)


@pytest.mark.parametrize("frames, size", SHAPES)
@pytest.mark.parametrize("action", synthetic.ACTIONS)
def test_pair_is_identical_before_the_decisive_frame_and_differs_after(action, frames, size):
    for seed in range(6):
        clean, corrupt, spec = synthetic.render_pair(action, seed, frames, size)
        d = spec.decisive_frame
        assert 1 <= d < frames
        assert clean[:d].tobytes() == corrupt[:d].tobytes(), f"{action} seed {seed}: frames before {d} differ"
        differs = (clean != corrupt).any(axis=(1, 2, 3))
        assert differs[d:].all(), f"{action} seed {seed}: frames {np.flatnonzero(~differs[d:]) + d} equal"


@pytest.mark.parametrize("action", synthetic.ACTIONS)
def test_pair_differences_lie_inside_the_outcome_box(action):
    areas = []
    for seed in range(12):
        clean, corrupt, spec = synthetic.render_pair(action, seed, frames=16, size=64)
        top, left, bottom, right = spec.box
        changed = (clean != corrupt).any(-1)  # [frames, h, w]
        inside = changed[:, top:bottom, left:right].sum()
        assert inside == changed.sum(), f"{action} seed {seed}: {changed.sum() - inside} changed pixels outside box"
        # The change is substantial, not a few pixels of rounding.
        assert np.abs(clean.astype(int) - corrupt)[spec.decisive_frame:].max() > 60
        areas.append((bottom - top) * (right - left) / 64**2)
        if action == "bowling":  # the outcome happens at the far (top) end of the lane, around the pins
            assert bottom <= 0.75 * 64 and top <= 0.15 * 64
    if action != "swinging":  # a pendulum that keeps swinging differs along its whole arc
        # pins fly apart, and the ball or block veers off to the side: a wider box; skittles are drawn up to 2x larger
        limit = {"bowling": 0.4, "skittles": 0.55}.get(action, 0.35)
        assert np.mean(areas) < limit, f"{action}: outcome boxes cover {np.mean(areas):.0%} of the frame"


def test_action_outcomes_share_the_class_label_and_event_outcomes_are_the_label():
    for action, outcomes in synthetic.OUTCOMES.items():
        labels = [synthetic.render(action, 5, outcome=o, frames=4, size=32)[1].label for o in outcomes]
        names = [synthetic.LABELS[i] for i in labels]
        if action in synthetic.EVENT_SCENES:
            assert names == [f"{action}_{o}" for o in outcomes]
        else:
            assert names == [action, action], f"{action}: the outcome must never change the label"
    assert tuple(synthetic.OUTCOMES) == synthetic.ACTIONS and len(synthetic.LABELS) == len(set(synthetic.LABELS))
    assert {"bowling", "golf_putt"}.isdisjoint(synthetic.EVENT_SCENES)


def test_no_outcome_label_of_a_bowling_or_golf_clip_reaches_the_training_labels():
    """The training set's labels, as `train` reads them, are the action for bowling and golf_putt clips:
    both outcomes occur under the one label, in about equal numbers."""
    x, y, specs = synthetic.dataset(n=200, seed=0, frames=4, size=32, with_specs=True)
    for action in ("bowling", "golf_putt"):
        rows = [(label, s.outcome) for label, s in zip(y.tolist(), specs) if s.action == action]
        assert {label for label, _ in rows} == {synthetic.LABELS.index(action)}
        counts = {o: sum(1 for _, oo in rows if oo == o) for o in synthetic.OUTCOMES[action]}
        assert min(counts.values()) >= 5, counts
    plan = synthetic.dataset_plan(200, seed=0)
    assert [(s.action, s.outcome, s.seed) for s in specs] == plan


@pytest.mark.parametrize("frames, size", SHAPES + [(5, 128)])
def test_every_class_moves_at_every_size(frames, size):
    h, w = (size, size) if isinstance(size, int) else size
    for action in synthetic.ACTIONS:
        clip, spec = synthetic.render(action, seed=2, frames=frames, size=size)
        assert clip.shape == (frames, h, w, 3) and clip.dtype == np.uint8
        assert (spec.frames, spec.height, spec.width) == (frames, h, w)
        # Objects move in most frame steps (changes far above the pixel noise); a clip may end at rest.
        step = np.abs(np.diff(clip.astype(int), axis=0)).max(axis=(1, 2, 3))
        moving = step > 60
        if action == "marble":
            # The ball is all that moves on a marble table, and it is gone (sunk) or at rest against the table's
            # edge (passed) by about half the clip: it must roll without a pause from its first step until then,
            # and stop only after the decisive frame.
            first, last = np.flatnonzero(moving)[[0, -1]]
            assert moving[first:last + 1].all() and last + 1 >= spec.decisive_frame, (frames, size, moving)
            continue
        assert moving.mean() >= 0.5, f"{action} {frames}x{size}: still frame steps {np.flatnonzero(~moving)}"


def test_dataset_is_balanced_reproducible_and_mixes_outcomes():
    x, y, specs = synthetic.dataset(n=61, seed=4, frames=4, size=32, with_specs=True)
    assert x.shape == (61, 4, 32, 32, 3) and x.dtype == np.uint8 and y.dtype == np.int64
    counts = np.bincount(y, minlength=len(synthetic.LABELS))
    assert counts.max() - counts.min() <= 1
    assert [s.label for s in specs] == y.tolist()
    assert len({(s.action, s.outcome) for s in specs}) == 2 * len(synthetic.ACTIONS)  # every outcome occurs
    np.testing.assert_array_equal(x[0], synthetic.render(specs[0].action, specs[0].seed, specs[0].outcome, 4, 32)[0])
    x2, y2 = synthetic.dataset(n=61, seed=4, frames=4, size=32)
    assert x2.tobytes() == x.tobytes() and (y2 == y).all()
    assert not (synthetic.dataset(n=61, seed=5, frames=4, size=32)[1] == y).all()


def test_classes_are_separable_by_motion_but_not_by_colour():
    x_train, y_train = synthetic.dataset(n=180, seed=0, frames=8, size=32)
    x_test, y_test = synthetic.dataset(n=120, seed=1, frames=8, size=32)
    motion = _nearest_centroid_accuracy(_motion_features(x_train), y_train, _motion_features(x_test), y_test)
    mean_colour = lambda x: x.reshape(len(x), -1, 3).astype(np.float64).mean(1) / 255  # noqa: E731
    colour = _nearest_centroid_accuracy(mean_colour(x_train), y_train, mean_colour(x_test), y_test)
    chance = 1 / len(synthetic.LABELS)
    assert motion > 3 * chance, f"motion-energy nearest centroid: {motion:.2f} (chance {chance:.2f})"
    assert colour < 2 * chance, f"mean colour alone should not give the class away: {colour:.2f}"


def _assert_minimal_pair(clean, corrupt, spec):
    """Identical before the decisive frame, different in every frame from it on, and only inside `spec.box`."""
    d, (top, left, bottom, right) = spec.decisive_frame, spec.box
    assert clean[:d].tobytes() == corrupt[:d].tobytes() and (clean != corrupt)[d:].any(axis=(1, 2, 3)).all()
    changed = (clean != corrupt).any(-1)
    assert changed[:, top:bottom, left:right].sum() == changed.sum()


@pytest.mark.parametrize("event_setting", [0.5, 1.0])
def test_event_setting_moves_event_scenes_only_and_keeps_the_pair_property(event_setting):
    """`event_setting` redraws the event scenes (skittles on a lane, marbles on a green, half at 1x) and leaves
    every action scene byte-identical; the event pairs stay minimal pairs."""
    for action in synthetic.ACTIONS:
        for seed in range(4):
            base = synthetic.render_pair(action, seed)
            moved = synthetic.render_pair(action, seed, event_setting=event_setting)
            same = all(a.tobytes() == b.tobytes() for a, b in zip(base[:2], moved[:2]))
            assert same == (action not in synthetic.EVENT_SCENES), (action, seed)
            if action in synthetic.EVENT_SCENES:
                _assert_minimal_pair(*moved)
    x0, y0 = synthetic.dataset(20, seed=4)
    x1, y1 = synthetic.dataset(20, seed=4, event_setting=event_setting)
    events = np.isin(y0, [label for label, _, outcome in synthetic.classes() if outcome])
    assert np.array_equal(y0, y1) and np.array_equal(x0[~events], x1[~events]) and not np.array_equal(x0, x1)


def test_event_setting_puts_skittles_on_a_bowling_lane():
    """With event_setting 1 every skittles scene is laid out as bowling's but without gutters (lane, pit, foul line:
    3 shapes, against bowling's 4); with 0, on a bare floor (floor and skirting board: 2)."""
    t = synthetic._Time(16, 64, 64, 5, np.arange(16) / 15, 4 / 15)
    for seed in range(20):
        assert len(synthetic._SCENES["skittles"](np.random.default_rng(seed), t, 1.0).layout) == 3
        assert len(synthetic._SCENES["skittles"](np.random.default_rng(seed), t, 0.0).layout) == 2
        assert len(synthetic._SCENES["bowling"](np.random.default_rng(seed), t).layout) == 4


def test_skittles_on_a_lane_are_hit_by_a_plank_not_a_ball():
    """On a lane, what tells skittles from bowling is the hitter: a plank 4.8 ball radii wide and 1.2 deep (two
    tokens wide at 64 px), where bowling rolls a disc and skittles on a floor push a small block."""
    t = synthetic._Time(16, 64, 64, 5, np.arange(16) / 15, 4 / 15)
    for seed in range(20):
        for setting, kind in ((1.0, "plank"), (0.0, "block")):
            hitter = synthetic._SCENES["skittles"](np.random.default_rng(seed), t, setting).build("toppled")[-1]
            hh, hw = hitter.params[2:4, 0]
            assert hitter.kind == "rect" and (hw / hh > 3.9 if kind == "plank" else hw / hh < 1.5), (seed, setting)
        ball = synthetic._SCENES["bowling"](np.random.default_rng(seed), t).build("strike")[-1]
        assert ball.kind == "disc"


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_bad_event_setting_is_refused(bad):
    with pytest.raises(ValueError, match="event_setting"):
        synthetic.render("marble", 0, event_setting=bad)
    with pytest.raises(ValueError, match="putt_marbles"):
        synthetic.render_pair("marble", 0, putt_marbles=bad)


def test_a_putt_marble_is_the_putt_without_its_club():
    """`putt_marbles` 1: the marble scene is golf_putt's, draw for draw (green, hole, ball, path, speeds), less the
    club's two shapes. (The marble draws one number first, whether to be a putt, so golf's generator is advanced
    by one draw to compare.)"""
    t = synthetic._Time(16, 64, 64, 5, np.arange(16) / 15, 4 / 15)
    for seed in range(10):
        golf_rng = np.random.default_rng(seed)
        golf_rng.uniform()
        golf = synthetic._SCENES["golf_putt"](golf_rng, t)
        marble = synthetic._SCENES["marble"](np.random.default_rng(seed), t, 0.0, 1.0)
        table = synthetic._SCENES["marble"](np.random.default_rng(seed), t, 0.0, 0.0)
        assert np.array_equal(golf.background, marble.background)
        shapes = lambda scene: [(s.kind, s.params.tolist()) for s in scene.layout]  # noqa: E731
        assert shapes(golf) == shapes(marble) and shapes(table) != shapes(marble)  # a green, not the framed table
        for outcome_golf, outcome_marble in (("holed", "sunk"), ("missed", "passed")):
            *club, ball = golf.build(outcome_golf)
            (marble_ball,) = marble.build(outcome_marble)
            assert [s.kind for s in club] == ["capsule", "rect"]
            assert np.array_equal(ball.params, marble_ball.params) and np.array_equal(ball.alpha, marble_ball.alpha)


@pytest.mark.parametrize("share", [0.5, 1.0])
def test_putt_marbles_move_marble_scenes_only_and_keep_the_pair_property(share):
    for action in synthetic.ACTIONS:
        for seed in range(4):
            base = synthetic.render_pair(action, seed)
            moved = synthetic.render_pair(action, seed, putt_marbles=share)
            same = all(a.tobytes() == b.tobytes() for a, b in zip(base[:2], moved[:2]))
            assert same == (action != "marble"), (action, seed)
            if action == "marble":
                _assert_minimal_pair(*moved)
    x0, y0 = synthetic.dataset(24, seed=4)
    x1, y1 = synthetic.dataset(24, seed=4, putt_marbles=share)
    marbles = np.isin(y0, [synthetic.LABELS.index(c) for c in ("marble_sunk", "marble_passed")])
    assert np.array_equal(y0, y1) and np.array_equal(x0[~marbles], x1[~marbles]) and not np.array_equal(x0, x1)


@pytest.mark.parametrize("kwargs", [
    dict(action="curling", seed=0), dict(action="bowling", seed=0, outcome="holed"),
    dict(action="bowling", seed=-1), dict(action="bowling", seed=0, frames=3),
    dict(action="bowling", seed=0, size=16), dict(action="bowling", seed=0, size=(64, 16)),
])
def test_bad_arguments_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        synthetic.render(**kwargs)


def test_contact_sheet_draws_two_rows_per_action(tmp_path):
    from PIL import Image

    path = synthetic.contact_sheet(tmp_path / "sheet.png", seed=1, frames=4, size=32, every=1, scale=1)
    image = Image.open(path)
    assert image.height == 2 * len(synthetic.ACTIONS) * (32 + 2)
    clean, _, _ = synthetic.render_pair("bowling", seed=1, frames=4, size=32)
    np.testing.assert_array_equal(np.asarray(image.convert("RGB"))[:32, 120:152][1:-1, 1:-1], clean[0][1:-1, 1:-1])


def test_write_pair_files_decode_to_the_rendered_frames(tmp_path):
    from vivit_lens import video

    spec = synthetic.write_pair(tmp_path, "golf_putt", seed=3, frames=16, size=64, fps=5)
    clean, corrupt, _ = synthetic.render_pair("golf_putt", seed=3, frames=16, size=64)
    for name, frames in (("clean", clean), ("corrupt", corrupt)):
        clip = video.load(tmp_path / f"{name}.mp4")
        np.testing.assert_array_equal(clip.frames, frames)  # lossless: bit-exact
        assert clip.fps == 5
    meta = json.loads((tmp_path / "spec.json").read_text())
    assert meta["decisive_frame"] == spec.decisive_frame and tuple(meta["box"]) == spec.box
    assert meta["clean_outcome"] == "holed" and meta["lossless"] is True and meta["seed"] == 3
