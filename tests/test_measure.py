"""Delta norms against a hand computation; [CLS] attention against the cached pattern, placed on the
token grid by the formula pos = 1 + t*H*W + h*W + w; head ranking on a known map."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import max_diff, pixels
from vivit_lens.measure import cls_attention, delta_norms, top_heads_by_cls_attention
from vivit_lens.patching import LabeledTensor


@pytest.fixture(scope="module")
def caches(small_model):
    clean = pixels(small_model.cfg, batch=1, seed=51)
    corrupt = clean.clone()
    corrupt[:, 6:, :, 16:, 16:] += 0.5
    with torch.no_grad():
        _, a = small_model.run_with_cache(clean)
        _, b = small_model.run_with_cache(corrupt)
    return clean, a, b


def test_delta_norms_match_a_hand_computation(small_model, caches):
    _, clean, corrupt = caches
    res = delta_norms(clean, corrupt)
    assert res.axes == ("hook", "layer", "where") and res.shape == (4, 3, 2)
    for i, name in enumerate(("resid_pre", "resid_post", "attn_out", "mlp_out")):
        for l in range(3):
            d = clean[f"blocks.{l}.hook_{name}"][0] - corrupt[f"blocks.{l}.hook_{name}"][0]
            cls = torch.sqrt((d[0] ** 2).sum())
            mean = torch.stack([torch.sqrt((d[p] ** 2).sum()) for p in range(d.shape[0])]).mean()
            assert abs(float(res.values[i, l, 0] - cls)) < 1e-5 and abs(float(res.values[i, l, 1] - mean)) < 1e-5
    # The pair differs only in the last tubelet time: at the embedding, [CLS] has no delta, tokens do.
    assert float(res.values[0, 0, 0]) == 0.0 and float(res.values[0, 0, 1]) > 0
    records = res.to_records()
    assert records[0] == {"hook": "resid_pre", "layer": 0, "where": "cls", "l2_norm": 0.0}
    sub = delta_norms(clean, corrupt, hooks=("resid_mid",), layers=[2])
    assert sub.shape == (1, 1, 2)


def test_cls_attention_is_the_pattern_row_on_the_grid(small_model, caches, sdpa_calls):
    x, cache, _ = caches
    cfg = small_model.cfg
    t_n, h_n, w_n = cfg.grid_shape
    attn = cls_attention(small_model, x, layers=[1, 2], heads=[0, 3])
    assert sdpa_calls["n"] == 3, "from the model: q and k only, no explicit [pos pos] pattern"
    assert attn.axes == ("layer", "head", "frame", "row", "col") and attn.shape == (2, 2, t_n, h_n, w_n)
    assert attn.labels[2][1] == "frames 2-3"
    for li, l in enumerate((1, 2)):
        for hi, h in enumerate((0, 3)):
            row = cache[f"blocks.{l}.attn.hook_pattern"][0, h, 0]
            for t, r, c in ((0, 0, 0), (1, 2, 3), (3, 3, 1)):
                assert abs(float(attn.values[li, hi, t, r, c] - row[1 + t * h_n * w_n + r * w_n + c])) < 1e-6
            total = attn.values[li, hi].sum() + attn.meta["cls_self"][li, hi]
            assert abs(float(total) - 1) < 1e-5
    from_cache = cls_attention(cache, layers=[1, 2], heads=[0, 3])
    assert max_diff(from_cache.values, attn.values) < 1e-6
    with pytest.raises(ValueError, match="pixel values"):
        cls_attention(small_model)


def test_top_heads_rank_by_mass_on_a_region():
    values = torch.zeros(2, 3, 2, 2, 2)  # [layer head t h w]
    values[1, 2, 1, 0, 1] = 0.6  # token 1 + 1*4 + 0*2 + 1 = 6
    values[0, 1, 1, 0, 1] = 0.3
    values[0, 0, 0, 1, 1] = 0.9  # token 4: outside the region
    attn = LabeledTensor(values, ("layer", "head", "frame", "row", "col"),
                         ((5, 9), (0, 1, 2), ("t0", "t1"), (0, 1), (0, 1)))  # fmt: skip
    top = top_heads_by_cls_attention(attn, positions=[6, 7], k=2)
    assert [(r["layer"], r["head"]) for r in top] == [(9, 2), (5, 1)]
    assert top[0]["mass"] == pytest.approx(0.6) and top[0]["peak"] == (1, 0, 1)
    peak = top_heads_by_cls_attention(attn, k=1)
    assert (peak[0]["layer"], peak[0]["head"], peak[0]["peak"]) == (5, 0, (0, 1, 1))
    with pytest.raises(ValueError, match="CLS"):
        top_heads_by_cls_attention(attn, positions=[0])
