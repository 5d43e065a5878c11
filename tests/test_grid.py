"""Tests of vivit_lens.grid: the mapping by hand and by brute force, and against transformers' own
tubelet embedding (changing the pixels of one tubelet changes exactly that token)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from transformers import VivitConfig, VivitForVideoClassification

from vivit_lens.config import ViViTConfig
from vivit_lens.grid import TokenGrid

VIVIT_B = TokenGrid(ViViTConfig())  # 16 x 14 x 14 tubelets of (2, 16, 16) over 32 x 224 x 224
# non-square, non-cubic, and with remainders: 9 frames (last one unseen), 36 rows (4 unseen), 50 cols (2 unseen)
ODD = TokenGrid(ViViTConfig(num_frames=9, image_size=(36, 50), tubelet_size=(2, 8, 16)))


def test_shape_and_sizes():
    assert VIVIT_B.shape == (16, 14, 14) and VIVIT_B.n_tubelets == 3136 and VIVIT_B.n_tokens == 3137
    assert VIVIT_B.cls == 0
    assert ODD.shape == (4, 4, 3) and ODD.n_tokens == 49


def test_positions_by_hand_for_vivit_b():
    cases = {1: (0, 0, 0), 2: (0, 0, 1), 14: (0, 0, 13), 15: (0, 1, 0), 196: (0, 13, 13), 197: (1, 0, 0),
             1 + 5 * 196 + 3 * 14 + 7: (5, 3, 7), 3136: (15, 13, 13)}
    for pos, thw in cases.items():
        assert VIVIT_B.pos_to_thw(pos) == thw
        assert VIVIT_B.thw_to_pos(*thw) == pos
    assert VIVIT_B.frames_of(1) == range(0, 2) and VIVIT_B.box_of(1) == (0, 0, 16, 16)
    assert VIVIT_B.frames_of(3136) == range(30, 32) and VIVIT_B.box_of(3136) == (208, 208, 224, 224)
    assert VIVIT_B.box_of(1 + 5 * 196 + 3 * 14 + 7) == (112, 48, 128, 64)  # x from col, y from row


@pytest.mark.parametrize("grid", [VIVIT_B, ODD], ids=["vivit-b", "odd"])
def test_round_trip_and_tensor_forms(grid):
    pos = torch.arange(1, grid.n_tokens)
    t, r, c = grid.pos_to_thw(pos)
    assert torch.equal(grid.thw_to_pos(t, r, c), pos)
    assert [grid.pos_to_thw(int(p)) for p in pos[::37]] == list(zip(t[::37].tolist(), r[::37].tolist(),
                                                                    c[::37].tolist()))
    ordered = sorted(itertools.product(*map(range, grid.shape)))  # time-major, then row, then column
    assert list(zip(t.tolist(), r.tolist(), c.tolist())) == ordered


@pytest.mark.parametrize("bad", [0, -1, 3137, 10**6, 1.0, True, torch.tensor([1, 0]), torch.tensor([1.0])])
def test_bad_positions_raise(bad):
    with pytest.raises((ValueError, TypeError)):  # a TypeError first under the runtime type checker
        VIVIT_B.pos_to_thw(bad)
    if isinstance(bad, int) and not isinstance(bad, bool):
        with pytest.raises(ValueError, match="CLS" if bad == 0 else "tubelet"):
            VIVIT_B.frames_of(bad)
        with pytest.raises(ValueError):
            VIVIT_B.box_of(bad)


@pytest.mark.parametrize("t,row,col", [(16, 0, 0), (0, 14, 0), (0, 0, 14), (-1, 0, 0)])
def test_bad_thw_raise(t, row, col):
    with pytest.raises(ValueError):
        VIVIT_B.thw_to_pos(t, row, col)


def token_table(grid):
    """Every tubelet token's (pos, frames, row, col, box), from the single-token accessors."""
    return [(pos, set(grid.frames_of(pos)), *grid.pos_to_thw(pos)[1:], grid.box_of(pos))
            for pos in range(1, grid.n_tokens)]


def brute_force_positions(table, frames=None, rows=None, cols=None, box=None):
    """Reference: test every token's frames, grid cell and pixel box against the region."""
    out = []
    for pos, seen, row, col, (x0, y0, x1, y1) in table:
        ok = (frames is None or seen & set(frames)) and (rows is None or row in rows) \
            and (cols is None or col in cols)
        if box is not None:
            ok = ok and x0 < box[2] and box[0] < x1 and y0 < box[3] and box[1] < y1
        if ok:
            out.append(pos)
    return out


@pytest.mark.parametrize("grid", [VIVIT_B, ODD], ids=["vivit-b", "odd"])
def test_positions_match_brute_force(grid):
    rng = np.random.default_rng(0)
    regions = [dict(), dict(frames=[0]), dict(frames=range(3, 8)), dict(rows=[0, 2]), dict(cols=[1]),
               dict(box=(0, 0, 1, 1)), dict(box=(grid.width - 1, grid.height - 1, grid.width, grid.height))]
    for _ in range(25):
        x0, x1 = sorted(rng.choice(grid.width + 1, 2, replace=False))
        y0, y1 = sorted(rng.choice(grid.height + 1, 2, replace=False))
        frames = sorted(set(rng.integers(0, grid.num_frames, rng.integers(1, 4)).tolist()))
        regions.append(dict(frames=frames, box=(int(x0), int(y0), int(x1), int(y1))))
        regions.append(dict(rows=[int(rng.integers(grid.shape[1]))], frames=frames))
    table = token_table(grid)
    for region in regions:
        got = grid.positions(**region)
        assert got.dtype == torch.long
        assert got.tolist() == brute_force_positions(table, **region), region
    assert grid.positions(include_cls=True).tolist() == list(range(grid.n_tokens))


def test_positions_forms_and_edges():
    assert torch.equal(VIVIT_B.positions(frames=slice(4, 6)), VIVIT_B.positions(frames=[4, 5]))
    assert torch.equal(VIVIT_B.positions(frames=5), VIVIT_B.positions(frames=torch.tensor([4])))
    single = VIVIT_B.positions(frames=7, box=(20, 40, 21, 41))
    assert single.tolist() == [VIVIT_B.thw_to_pos(3, 2, 1)]
    assert VIVIT_B.positions(frames=7, box=(20, 40, 21, 41), include_cls=True).tolist() == [0] + single.tolist()
    assert ODD.positions(frames=[8]).numel() == 0  # the 9th frame is past the last whole tubelet
    assert ODD.positions(box=(48, 0, 50, 36)).numel() == 0  # columns 48, 49 are seen by no token


@pytest.mark.parametrize("kwargs", [
    dict(frames=[32]), dict(frames=[-1]), dict(rows=[14]), dict(cols=[14]), dict(frames=[True]),
    dict(box=(10, 10, 10, 20)), dict(box=(0, 0, 225, 10)), dict(box=(-1, 0, 5, 5)), dict(box=(0, 0, 5)),
    dict(box=[30, 0, 20, 5]),
])
def test_positions_validate_arguments(kwargs):
    with pytest.raises(ValueError):
        VIVIT_B.positions(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(cols=[0.5]), dict(box=(0.0, 0, 5, 5)), dict(frames="0")])
def test_positions_reject_wrong_types(kwargs):
    # ValueErrors; under the test suite's runtime type checker they are TypeErrors first
    with pytest.raises((ValueError, TypeError)):
        VIVIT_B.positions(**kwargs)


@pytest.mark.parametrize("grid", [VIVIT_B, ODD], ids=["vivit-b", "odd"])
def test_to_grid_per_frame_and_to_frames_against_loops(grid):
    values = torch.arange(grid.n_tokens, dtype=torch.float32) * 10  # value = 10 * position
    g = grid.to_grid(values)
    assert g.shape == grid.shape
    for t, r, c in itertools.product(*map(range, grid.shape)):
        assert g[t, r, c] == 10 * grid.thw_to_pos(t, r, c)
    torch.testing.assert_close(grid.to_grid(values[1:]), g)  # tubelets only, no [CLS]
    expected = torch.tensor([sum(10 * grid.thw_to_pos(t, r, c) for r in range(grid.shape[1])
                                 for c in range(grid.shape[2])) for t in range(grid.shape[0])], dtype=torch.float32)
    torch.testing.assert_close(grid.per_frame(values), expected)
    frames = grid.to_frames(values, fill=-1.0)
    assert frames.shape == (grid.num_frames, grid.height, grid.width)
    seen = torch.full_like(frames, -1.0)
    for pos in range(1, grid.n_tokens):
        x0, y0, x1, y1 = grid.box_of(pos)
        seen[grid.frames_of(pos).start:grid.frames_of(pos).stop, y0:y1, x0:x1] = 10 * pos
    torch.testing.assert_close(frames, seen)


def test_batched_values_and_bad_lengths():
    values = torch.randn(3, ODD.n_tokens)
    assert ODD.to_grid(values).shape == (3, *ODD.shape)
    for i in range(3):
        torch.testing.assert_close(ODD.to_frames(values)[i], ODD.to_frames(values[i]))
        torch.testing.assert_close(ODD.per_frame(values)[i], ODD.per_frame(values[i]))
    for n in (ODD.n_tokens + 1, ODD.n_tubelets - 1):
        with pytest.raises(ValueError, match="expected values"):
            ODD.to_grid(torch.zeros(n))


# Against transformers' tubelet embedding ----------------------------------------------------------
HF_CONFIGS = {
    "square": dict(image_size=32, num_frames=8, tubelet_size=[2, 8, 8]),
    "non-square": dict(image_size=[32, 48], num_frames=6, tubelet_size=[2, 8, 16]),
}


@pytest.fixture(scope="module", params=list(HF_CONFIGS))
def hf_embed(request):
    kwargs = HF_CONFIGS[request.param]
    hf_config = VivitConfig(**kwargs, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            intermediate_size=64)
    torch.manual_seed(0)
    model = VivitForVideoClassification(hf_config).eval()
    grid = TokenGrid(ViViTConfig.from_hf_dict(hf_config.to_dict()))
    return model.vivit.embeddings.patch_embeddings, grid


def _pixels(grid, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, grid.num_frames, 3, grid.height, grid.width, generator=g) * 4 - 3


def _changed_tokens(embed, before, after):
    with torch.no_grad():
        a, b = embed(before)[0], embed(after)[0]  # [tubelets, d]: no CLS, token pos is row + 1
    return (torch.nonzero((a != b).any(-1)).flatten() + 1).tolist()


def test_one_tubelet_changes_exactly_its_token(hf_embed):
    embed, grid = hf_embed
    pixels = _pixels(grid)
    with torch.no_grad():
        assert embed(pixels).shape[1] == grid.n_tubelets
    t_last, r_last, c_last = (s - 1 for s in grid.shape)
    corners = [grid.thw_to_pos(t, r, c) for t in (0, t_last) for r in (0, r_last) for c in (0, c_last)]
    middle = [grid.thw_to_pos(t_last // 2, r_last // 2, c_last // 2 + 1), 2, grid.n_tokens - 2]
    for pos in corners + middle:
        x0, y0, x1, y1 = grid.box_of(pos)
        frames = grid.frames_of(pos)
        changed = pixels.clone()
        changed[0, frames.start:frames.stop, :, y0:y1, x0:x1] += 0.5
        assert _changed_tokens(embed, pixels, changed) == [pos], f"token {pos} = {grid.pos_to_thw(pos)}"
        assert grid.positions(frames=frames, box=(x0, y0, x1, y1)).tolist() == [pos]


def test_a_region_changes_exactly_its_positions(hf_embed):
    embed, grid = hf_embed
    pixels = _pixels(grid, seed=1)
    rng = np.random.default_rng(0)
    for _ in range(6):
        x0, x1 = sorted(int(v) for v in rng.choice(grid.width + 1, 2, replace=False))
        y0, y1 = sorted(int(v) for v in rng.choice(grid.height + 1, 2, replace=False))
        f0 = int(rng.integers(grid.num_frames))
        f1 = int(rng.integers(f0 + 1, grid.num_frames + 1))
        changed = pixels.clone()
        changed[0, f0:f1, :, y0:y1, x0:x1] = 0.0  # zero-ablate the region
        assert _changed_tokens(embed, pixels, changed) == \
            grid.positions(frames=range(f0, f1), box=(x0, y0, x1, y1)).tolist()


def test_to_frames_paints_where_the_embedding_changed(hf_embed):
    embed, grid = hf_embed
    pixels = _pixels(grid, seed=2)
    pos = grid.thw_to_pos(1, 1, 0)
    changed = pixels.clone()
    frames, (x0, y0, x1, y1) = grid.frames_of(pos), grid.box_of(pos)
    changed[0, frames.start:frames.stop, :, y0:y1, x0:x1] *= -1
    with torch.no_grad():
        delta = (embed(changed)[0] - embed(pixels)[0]).norm(dim=-1)  # [tubelets]
    painted = grid.to_frames(delta) > 0
    touched = (changed != pixels)[0].any(dim=1)  # [frames, height, width]
    assert torch.equal(painted, touched)
