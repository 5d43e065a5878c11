"""Linear probes on synthetic data whose answer is known: labels linearly encoded at some layers and
not at others, a shuffled-label control at chance, and a fingerprint that only a grouped split exposes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import max_diff, pixels
from vivit_lens.probes import collect_activations, fit_probe, split_indices, train_probes


def synthetic(n: int = 240, d: int = 16, seed: int = 0):
    """Four 'layers': noise, linear code, XOR code (not linearly decodable), strong linear code."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)

    def noise():
        return torch.randn(n, d, generator=g)

    u = torch.randn(d, generator=g)
    u = u / u.norm()
    linear = noise() + 1.5 * (2 * y[:, None] - 1) * u
    a, b = torch.randint(0, 2, (2, n), generator=g)
    xor = noise() * 0.3
    xor[:, 0] += 2 * a - 1
    xor[:, 1] += 2 * (a ^ b) - 1
    y_xor = b  # label = a XOR (a XOR b): invisible to any linear read-out of the two coordinates
    strong = noise() + 4 * (2 * y[:, None] - 1) * u
    acts = torch.stack([noise(), linear, xor, strong])
    return acts, y, y_xor


def test_probes_find_linear_codes_and_not_others():
    acts, y, y_xor = synthetic()
    res = train_probes(acts[[0, 1, 3]], y, layers=[0, 1, 3])
    assert res.layers == [0, 1, 3] and res.n_train + res.n_test == 240
    assert abs(float(res.test[0]) - 0.5) < 0.15, "noise: chance"
    assert res.test[1] > 0.85 and res.test[2] > 0.97, "linear codes are read out on held-out data"
    assert (res.control_test - 0.5).abs().max() < 0.15, "shuffled labels: chance on held-out data"
    assert res.selectivity[2] > 0.35
    xor = train_probes(acts[2:3], y_xor)
    assert abs(float(xor.test[0]) - 0.5) < 0.15, "a non-linear (XOR) code is invisible to a linear probe"
    assert "selectivity" in repr(res) and len(res.to_records()) == 3


def test_fit_probe_reaches_the_optimum():
    acts, y, _ = synthetic(n=120)
    x = acts[1].double()
    W, b = fit_probe(x, y, 2, weight_decay=1e-2)
    W, b = W.clone().requires_grad_(True), b.clone().requires_grad_(True)
    loss = F.cross_entropy(x @ W + b, y) + 1e-2 * W.pow(2).sum()
    gW, gb = torch.autograd.grad(loss, (W, b))
    assert gW.abs().max() < 1e-6 and gb.abs().max() < 1e-6, "the gradient of the penalised loss vanishes"


def test_fingerprint_is_visible_with_a_grouped_split():
    """Clips of 80 'videos'; each video has its own feature offset, labels are arbitrary per video."""
    g = torch.Generator().manual_seed(3)
    videos = torch.arange(80).repeat_interleave(3)
    video_label = torch.tensor([0, 1] * 40)[torch.randperm(80, generator=g)]
    offsets = torch.randn(80, 128, generator=g) * 3
    acts = (offsets[videos] + 0.3 * torch.randn(240, 128, generator=g))[None]
    labels = video_label[videos]
    leaky = train_probes(acts, labels)  # random clip split: the same videos on both sides
    grouped = train_probes(acts, labels, groups=videos)
    assert leaky.test[0] > 0.9, "a probe that recognises videos looks near perfect on a clip-level split"
    assert grouped.test[0] < 0.75, "held-out videos (20 of them): the fingerprint does not transfer"
    assert grouped.control_train[0] > 0.9, "the probe fits shuffled labels almost as well: capacity, not a concept"
    train_idx, test_idx = split_indices(labels, groups=videos)
    assert not set(videos[train_idx].tolist()) & set(videos[test_idx].tolist())
    # The paper's setting: two videos, one per class. No honest split exists, and the code says so.
    two = torch.arange(2).repeat_interleave(10)
    with pytest.raises(ValueError, match="single group"):
        train_probes(acts[:, :20], two, groups=two)


def test_split_is_stratified_and_reproducible():
    y = torch.tensor([0] * 30 + [1] * 10)
    tr, te = split_indices(y, 0.25, seed=1)
    assert (y[te] == 0).sum() == 8 and (y[te] == 1).sum() == 3
    assert torch.equal(split_indices(y, 0.25, seed=1)[1], te) and not set(tr.tolist()) & set(te.tolist())
    with pytest.raises(ValueError, match="single group"):
        split_indices(y, groups=torch.zeros(40, dtype=torch.long))


def test_minimal_pairs_are_held_out_whole():
    """Groups that hold both labels (a pair: clean = 1, corrupt = 0): whole pairs go to one side."""
    pairs = torch.arange(12).repeat_interleave(2)
    labels = torch.tensor([1, 0] * 12)
    tr, te = split_indices(labels, 0.25, groups=pairs, seed=2)
    assert len(te) == 6 and not set(pairs[tr].tolist()) & set(pairs[te].tolist())
    assert set(labels[te].tolist()) == set(labels[tr].tolist()) == {0, 1}
    # a pair fingerprint (each pair its own offset, outcome carried by nothing): held-out pairs are at chance,
    # a clip-level split that puts a pair's two clips on both sides sits below it (the partner gets the other label)
    g = torch.Generator().manual_seed(0)
    pairs, labels = torch.arange(60).repeat_interleave(2), torch.tensor([1, 0] * 60)
    acts = (torch.randn(60, 64, generator=g)[pairs] * 3 + 0.1 * torch.randn(120, 64, generator=g))[None]
    held_out = train_probes(acts, labels, groups=pairs)
    assert 0.3 < float(held_out.test[0]) < 0.7


def test_collect_activations_pools_cls_and_tokens(small_model):
    clips = pixels(small_model.cfg, batch=5, seed=41)
    with torch.no_grad():
        _, cache = small_model.run_with_cache(clips, names_filter=lambda n: n.endswith("hook_resid_post"))
    cls = collect_activations(small_model, clips, batch_size=2, progress=False)
    assert cls.shape == (3, 5, small_model.cfg.d_model)
    for l in range(3):
        assert max_diff(cls[l], cache["resid_post", l][:, 0]) < 1e-5
    mean = collect_activations(small_model, [clips[:3], clips[3:]], layers=[1], pool="mean", progress=False)
    assert mean.shape == (1, 5, small_model.cfg.d_model)
    assert max_diff(mean[0], cache["resid_post", 1][:, 1:].mean(1)) < 1e-5


def _paired(n_pairs: int, d: int, strength: float, seed: int):
    """Minimal-pair data: each pair shares a random 'scene' vector; the success clip adds +strength * u, the
    failure clip -strength * u. Labels [1, 0] per pair, group = pair id."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=g)
    u = u / u.norm()
    scene = torch.randn(n_pairs, 1, d, generator=g)
    x = scene + 0.5 * torch.randn(n_pairs, 2, d, generator=g) + strength * torch.tensor([1.0, -1.0])[None, :, None] * u
    return x.reshape(2 * n_pairs, d), torch.tensor([1, 0] * n_pairs), torch.arange(n_pairs).repeat_interleave(2)


def test_grouped_cv_probes_match_a_scipy_logistic_regression_fold_by_fold():
    """Same objective (mean cross-entropy + wd * ||W||^2 on standardised features), same folds, minimised by
    scipy instead of torch's L-BFGS: the out-of-fold accuracy is identical."""
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    from vivit_lens.probes import _fold_of_groups, grouped_cv_probes

    x, y, groups = _paired(30, 6, 0.4, seed=1)
    rec = grouped_cv_probes(x[None], y, groups, k=5, n_boot=200, seed=3)[0]
    fold = _fold_of_groups(groups, 5, 3)
    for f in range(5):  # whole pairs per fold, and every fold used
        assert fold[groups == groups[fold == f][0]].eq(f).all()
    xs, ys, wd = x.double().numpy(), y.numpy(), 1e-3
    correct = 0
    for f in range(5):
        tr, te = (fold != f).numpy(), (fold == f).numpy()
        mu, sd = xs[tr].mean(0), xs[tr].std(0)
        a, b = (xs[tr] - mu) / sd, (xs[te] - mu) / sd

        def loss(theta):
            W, c = theta[:12].reshape(6, 2), theta[12:]
            z = a @ W + c
            return (logsumexp(z, 1) - z[np.arange(len(z)), ys[tr]]).mean() + wd * (W**2).sum()

        theta = minimize(loss, np.zeros(14), method="BFGS", options={"gtol": 1e-10}).x
        correct += ((b @ theta[:12].reshape(6, 2) + theta[12:]).argmax(1) == ys[te]).sum()
    assert rec["test"] == pytest.approx(correct / len(y))
    assert rec["test_lo"] <= rec["test"] <= rec["test_hi"] and rec["n_groups"] == 30 and rec["k"] == 5


def test_grouped_cv_probes_find_a_paired_code_and_the_control_does_not():
    from vivit_lens.probes import grouped_cv_probes

    coded, y, groups = _paired(60, 8, 3.0, seed=0)
    noise, _, _ = _paired(60, 8, 0.0, seed=0)
    recs = grouped_cv_probes(torch.stack([noise, coded]), y, groups, k=5, n_boot=300)
    assert recs[1]["test"] >= 0.9 and recs[1]["test_lo"] > 0.8
    assert abs(recs[0]["test"] - 0.5) < 0.15 and abs(recs[1]["control"] - 0.5) < 0.15
    with pytest.raises(ValueError, match="k must be"):
        grouped_cv_probes(coded[None], y, groups, k=61)


def test_transfer_probes_carry_a_shared_direction_and_not_an_unshared_one():
    from vivit_lens.probes import transfer_probes

    a, ya, _ = _paired(40, 8, 3.0, seed=0)
    b_same, yb, gb = _paired(40, 8, 3.0, seed=0)  # the same code direction u and scenes (same seed)
    b_same = b_same + 1.0  # and shifted
    b_other, _, _ = _paired(40, 8, 3.0, seed=7)  # another direction
    same = transfer_probes(a[None], ya, b_same[None], yb, gb, n_boot=200)[0]
    other = transfer_probes(a[None], ya, b_other[None], yb, gb, n_boot=200)[0]
    assert same["test"] >= 0.85 and abs(other["test"] - 0.5) < 0.3
