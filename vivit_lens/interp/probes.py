"""Linear probes per layer, with a held-out split and a shuffled-label control.

    acts = collect_activations(model, clips, pool="readout")      # [layer n d_model], one row per clip
    res = train_probes(acts, labels, groups=video_ids)            # held-out split over whole videos
    res.to_records()                                               # train / test / control accuracy per layer

A probe is multinomial logistic regression (standardised features, L2 penalty, full-batch
L-BFGS), one per layer. The control trains the same probe on shuffled labels: a probe that is as
good on shuffled labels (on its training set) separates any labelling of these inputs, so its
accuracy says little about a concept. With `groups` (e.g. one id per source video), the split
keeps each group on one side, so a probe cannot pass by recognising clips it has seen ("a
fingerprint"): one id per minimal pair holds out whole pairs. The paper's two-video probe cannot
even be split that way, and says so.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from vivit_lens.models.utils import get_act_name


@dataclass
class ProbeResults:
    """Accuracy per layer: `train`, `test` (held out), and the shuffled-label control's `control_train`/`control_test`.

    `selectivity = test - control_test`; `chance` is the majority-class rate of the test set.
    """

    layers: list[int]
    train: Tensor
    test: Tensor
    control_train: Tensor
    control_test: Tensor
    chance: float
    n_train: int
    n_test: int
    probes: list[tuple[Tensor, Tensor]] = field(default_factory=list, repr=False)

    @property
    def selectivity(self) -> Tensor:
        return self.test - self.control_test

    def to_records(self) -> list[dict]:
        return [{"layer": l, "train": float(a), "test": float(b), "control_train": float(c), "control_test": float(d),
                 "selectivity": float(b - d), "chance": self.chance, "n_train": self.n_train, "n_test": self.n_test}
                for l, a, b, c, d in zip(self.layers, self.train, self.test, self.control_train, self.control_test)]  # fmt: skip

    def __repr__(self) -> str:
        head = f"ProbeResults(n_train={self.n_train}, n_test={self.n_test}, chance={self.chance:.3f})"
        lines = [head, "  layer   train    test  ctrl_train  ctrl_test  selectivity"]
        for r in self.to_records():
            lines.append(f"  {r['layer']:>5}  {r['train']:6.3f}  {r['test']:6.3f}  {r['control_train']:10.3f}"
                         f"  {r['control_test']:9.3f}  {r['selectivity']:11.3f}")  # fmt: skip
        return "\n".join(lines)


def split_indices(labels: Tensor, test_fraction: float | int = 0.25, groups: Tensor | None = None,
                  seed: int = 0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Train/test indices; with `groups`, whole groups go to one side.

    Without groups, or when every group holds one label (clips of one source video), the split is
    stratified: each class puts `ceil(test_fraction * its count)` samples (or groups) in the test
    set and keeps at least one for training; a class with a single group cannot be split. When a
    group holds several labels (a minimal pair: one clip per outcome), `ceil(test_fraction * n_groups)`
    whole groups are held out at random, and both sides must still see every class.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if groups is not None and len(groups) != len(labels):
        raise ValueError(f"groups has {len(groups)} entries but labels has {len(labels)}")
    g = torch.Generator().manual_seed(seed)
    units = torch.arange(len(labels)) if groups is None else groups
    if groups is not None and any(labels[groups == u].unique().numel() > 1 for u in groups.unique()):
        members = groups.unique()
        if len(members) < 2:
            raise ValueError("a single group: it cannot be both trained on and held out")
        k = min(max(1, math.ceil(test_fraction * len(members))), len(members) - 1)
        is_test = torch.isin(groups, members[torch.randperm(len(members), generator=g)[:k]])
        classes = labels.unique().numel()
        if labels[is_test].unique().numel() < classes or labels[~is_test].unique().numel() < classes:
            raise ValueError("the held-out groups and the training groups do not both hold every class")
        return torch.nonzero(~is_test).reshape(-1), torch.nonzero(is_test).reshape(-1)
    test = []
    for c in labels.unique().tolist():
        members = units[labels == c].unique()
        if len(members) < 2:
            what = "group" if groups is not None else "sample"
            raise ValueError(f"class {c} has a single {what}: it cannot be both trained on and held out")
        k = min(max(1, math.ceil(test_fraction * len(members))), len(members) - 1)
        test += members[torch.randperm(len(members), generator=g)[:k]].tolist()
    is_test = torch.isin(units, torch.tensor(test))
    return torch.nonzero(~is_test).reshape(-1), torch.nonzero(is_test).reshape(-1)


@contextmanager
def _one_thread() -> Iterator[None]:
    """Probe problems are tiny: one thread avoids the thread start-up and spin costs that dominate them."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit_probe(x: Float[Tensor, "n d"], y: Int[Tensor, "n"], n_classes: int, weight_decay: float | int = 1e-3,
              max_iter: int = 200) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Multinomial logistic regression by full-batch L-BFGS: `(W [d n_classes], b [n_classes])`.

    Minimises mean cross-entropy + `weight_decay * ||W||^2` (in float64, deterministic).
    """
    x, y = x.double(), y.long()
    W = torch.zeros(x.shape[1], n_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ W + b, y) + weight_decay * W.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad(), _one_thread():
        opt.step(closure)
    return W.detach(), b.detach()


def _accuracy(x: Tensor, y: Tensor, W: Tensor, b: Tensor) -> float:
    return float(((x.double() @ W + b).argmax(-1) == y).double().mean()) if len(y) else float("nan")


def train_probes(
    acts_by_layer: Float[Tensor, "layer n d"],
    labels: Int[Tensor, "n"],
    *,
    layers: Sequence[int] | None = None,
    test_fraction: float | int = 0.25,
    groups: Int[Tensor, "n"] | None = None,
    weight_decay: float | int = 1e-3,
    max_iter: int = 200,
    control: bool = True,
    seed: int = 0,
) -> ProbeResults:
    """Train one linear probe per layer on `acts_by_layer[l]` to predict `labels`, and test it held out.

    Features are standardised with the training set's mean and std. `layers` names the rows of
    `acts_by_layer` (default 0..). The control (`control=True`) shuffles all labels once (with
    `seed`) and repeats split, training and testing: its test accuracy should sit at chance, and
    its train accuracy shows how easily the probe fits arbitrary labels of these inputs.
    """
    labels = labels.long()
    if acts_by_layer.shape[1] != labels.shape[0]:
        raise ValueError(f"acts have {acts_by_layer.shape[1]} samples, labels {labels.shape[0]}")
    n_classes = int(labels.max()) + 1
    layer_names = list(range(acts_by_layer.shape[0])) if layers is None else [int(l) for l in layers]
    train_idx, test_idx = split_indices(labels, test_fraction, groups, seed)
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed + 1))]
    out = {k: [] for k in ("train", "test", "control_train", "control_test")}
    probes = []
    for acts in acts_by_layer:
        x = acts.double()
        mean, std = x[train_idx].mean(0), x[train_idx].std(0, unbiased=False).clamp_min(1e-8)
        x = (x - mean) / std
        W, b = fit_probe(x[train_idx], labels[train_idx], n_classes, weight_decay, max_iter)
        probes.append((W, b))
        out["train"].append(_accuracy(x[train_idx], labels[train_idx], W, b))
        out["test"].append(_accuracy(x[test_idx], labels[test_idx], W, b))
        if control:
            Wc, bc = fit_probe(x[train_idx], shuffled[train_idx], n_classes, weight_decay, max_iter)
            out["control_train"].append(_accuracy(x[train_idx], shuffled[train_idx], Wc, bc))
            out["control_test"].append(_accuracy(x[test_idx], shuffled[test_idx], Wc, bc))
        else:
            out["control_train"].append(float("nan"))
            out["control_test"].append(float("nan"))
    chance = float(torch.bincount(labels[test_idx], minlength=n_classes).max()) / len(test_idx)
    return ProbeResults(layer_names, *(torch.tensor(out[k]) for k in ("train", "test", "control_train", "control_test")),
                        chance=chance, n_train=len(train_idx), n_test=len(test_idx), probes=probes)  # fmt: skip


def _standardise(x_train: Tensor, *xs: Tensor) -> list[Tensor]:
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False).clamp_min(1e-8)
    return [(x - mean) / std for x in (x_train, *xs)]


def _fold_of_groups(groups: Tensor, k: int, seed: int) -> Tensor:
    """Fold index per sample: the groups, shuffled with `seed`, dealt round-robin into `k` folds."""
    members = groups.unique()
    order = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))]
    fold_of = {int(g): i % k for i, g in enumerate(order)}
    return torch.tensor([fold_of[int(g)] for g in groups])


def _shuffle_within_groups(labels: Tensor, groups: Tensor, seed: int) -> Tensor:
    """The shuffled-label control: labels permuted within each group (a minimal pair keeps one clip of each
    outcome, but which clip is which is a coin flip), so the labels carry nothing the inputs show."""
    g = torch.Generator().manual_seed(seed)
    out = labels.clone()
    for u in groups.unique():
        idx = torch.nonzero(groups == u).reshape(-1)
        out[idx] = labels[idx[torch.randperm(len(idx), generator=g)]]
    return out


def bootstrap_ci(values: np.ndarray | Sequence, n_boot: int = 2000, seed: int = 0,
                 level: float = 0.95) -> dict:  # fmt: skip
    """Mean over the first axis with a percentile bootstrap CI: `{"mean", "lo", "hi", "n"}` (same shape as one row)."""
    v = np.asarray(values, dtype=float)
    n = v.shape[0]
    if n == 0:
        raise ValueError("bootstrap_ci needs at least one value")
    mean = np.nanmean(v, axis=0)
    if n == 1:
        return {"mean": mean, "lo": mean, "hi": mean, "n": 1}
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    means = np.nanmean(v[idx], axis=1)
    a = (1 - level) / 2
    return {"mean": mean, "lo": np.quantile(means, a, axis=0), "hi": np.quantile(means, 1 - a, axis=0), "n": n}


def _accuracy_ci(correct: Tensor, group_index: Tensor, n_boot: int, seed: int) -> tuple[float, float, float]:
    """Accuracy of 0/1 `correct` predictions and its 95% bootstrap CI over groups (`group_index`: 0..G-1)."""
    per_group = torch.zeros(int(group_index.max()) + 1, dtype=torch.float64).index_add_(0, group_index, correct)
    per_group /= torch.bincount(group_index).double()
    ci = bootstrap_ci(per_group.numpy(), n_boot=n_boot, seed=seed)
    return float(correct.mean()), float(ci["lo"]), float(ci["hi"])


def best_record(records: Sequence[dict], key: str = "test") -> dict:
    """The layer record with the highest `key`; ties go to the earliest layer."""
    return max(records, key=lambda r: (r[key], -r["layer"]))


def grouped_cv_probes(
    acts_by_layer: Float[Tensor, "layer n d"],
    labels: Int[Tensor, "n"],
    groups: Int[Tensor, "n"],
    *,
    k: int = 5,
    layers: Sequence[int] | None = None,
    weight_decay: float | int = 1e-3,
    max_iter: int = 200,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """Grouped k-fold probes, one per layer: every sample is predicted once, by a probe trained on the
    other folds, and a group (a minimal pair, a source video) never sits on both sides of a split.

    Returns one record per layer: `test` (accuracy of the out-of-fold predictions) with its 95% bootstrap
    CI over groups (`test_lo`, `test_hi`), the same for the shuffled-label `control` (labels permuted within
    each group, same folds), the mean training accuracy of the k probes (`train`, `control_train`), and `n`,
    `n_groups`, `k`, `chance` (majority-class rate).
    """
    labels, groups = labels.long(), groups.long()
    n_groups = groups.unique().numel()
    if acts_by_layer.shape[1] != labels.shape[0] or groups.shape[0] != labels.shape[0]:
        raise ValueError(f"acts have {acts_by_layer.shape[1]} samples, labels {labels.shape[0]}, "
                         f"groups {groups.shape[0]}")  # fmt: skip
    if not 2 <= k <= n_groups:
        raise ValueError(f"k must be in [2, number of groups = {n_groups}], got {k}")
    n_classes = int(labels.max()) + 1
    fold = _fold_of_groups(groups, k, seed)
    control_labels = _shuffle_within_groups(labels, groups, seed + 1)
    group_index = groups.unique(return_inverse=True)[1]
    chance = float(torch.bincount(labels, minlength=n_classes).max()) / len(labels)
    layer_names = list(range(acts_by_layer.shape[0])) if layers is None else [int(l) for l in layers]
    records = []
    for name, acts in zip(layer_names, acts_by_layer):
        x = acts.double()
        rec: dict = {"layer": name}
        for key, y in (("test", labels), ("control", control_labels)):
            correct, train_acc = torch.zeros(len(y), dtype=torch.float64), []
            for f in range(k):
                tr, te = fold != f, fold == f
                xtr, xte = _standardise(x[tr], x[te])
                W, b = fit_probe(xtr, y[tr], n_classes, weight_decay, max_iter)
                train_acc.append(_accuracy(xtr, y[tr], W, b))
                correct[te] = ((xte @ W + b).argmax(-1) == y[te]).double()
            rec[key], rec[f"{key}_lo"], rec[f"{key}_hi"] = _accuracy_ci(correct, group_index, n_boot, seed)
            rec["train" if key == "test" else "control_train"] = float(sum(train_acc) / k)
        rec.update(n=len(labels), n_groups=n_groups, k=k, chance=chance)
        records.append(rec)
    return records


def transfer_probes(
    train_acts: Float[Tensor, "layer n d"],
    train_labels: Int[Tensor, "n"],
    test_acts: Float[Tensor, "layer m d"],
    test_labels: Int[Tensor, "m"],
    test_groups: Int[Tensor, "m"] | None = None,
    *,
    weight_decay: float | int = 1e-3,
    max_iter: int = 200,
    n_boot: int = 2000,
    seed: int = 0,
) -> list[dict]:
    """A probe per layer trained on one set (e.g. bowling outcomes) and tested on another (golf outcomes):
    `test` accuracy with a 95% bootstrap CI over `test_groups` (default: every sample its own group).
    Features are standardised with each set's own statistics, so a shift of the mean between the two
    domains does not count against a shared direction."""
    n_classes = int(max(train_labels.max(), test_labels.max())) + 1
    groups = torch.arange(len(test_labels)) if test_groups is None else test_groups.long()
    group_index = groups.unique(return_inverse=True)[1]
    records = []
    for layer, (a, b_) in enumerate(zip(train_acts, test_acts)):
        (xtr,), (xte,) = _standardise(a.double()), _standardise(b_.double())
        W, b = fit_probe(xtr, train_labels.long(), n_classes, weight_decay, max_iter)
        correct = ((xte @ W + b).argmax(-1) == test_labels.long()).double()
        acc, lo, hi = _accuracy_ci(correct, group_index, n_boot, seed)
        records.append({"layer": layer, "train": _accuracy(xtr, train_labels.long(), W, b), "test": acc,
                        "test_lo": lo, "test_hi": hi, "n_train": len(train_labels), "n_test": len(test_labels)})
    return records


@dataclass(frozen=True)
class _BatchActivations:
    """One batch's pooled per-layer activations (and top-1 classes): the unit of work `collect_activations`
    gives a runner (a picklable function of `(model, batch)`; a batch of video paths is loaded where it runs)."""

    names: tuple[str, ...]
    pool: str
    return_top1: bool

    def __call__(self, model, batch: Tensor | list) -> tuple[Tensor, Tensor | None]:
        x = _load_clips(model, batch) if isinstance(batch, list) else batch
        if x.ndim == 4:  # one clip [frames channels height width]
            x = x.unsqueeze(0)
        stop = max(int(n.split(".")[1]) for n in self.names) + 1
        with torch.no_grad():
            kwargs = {"stop_at_layer": stop} if stop < model.cfg.n_layers and not self.return_top1 else {}
            logits, cache = model.run_with_cache(x, names_filter=list(self.names), **kwargs)
        acts = torch.stack([cache[n] for n in self.names])  # [layer batch pos d_model]
        return _pool(acts, self.pool, model), (logits.argmax(-1) if self.return_top1 else None)


POOLS = ("cls", "mean", "readout")


def _pool(acts: Float[Tensor, "layer batch pos d_model"], pool: str, model) -> Float[Tensor, "layer batch d_model"]:
    """One vector per clip: the [CLS] token, the mean over the tubelet tokens, or the mean over the readout positions."""
    if pool == "cls":
        return acts[:, :, _cls_of(model)]
    if pool == "mean":
        return acts[:, :, model.grid.first:].mean(2)
    return acts[:, :, list(model.readout_positions)].mean(2)


def _cls_of(model) -> int:
    cls = model.grid.cls
    if cls is None:
        raise ValueError(f"pool='cls': {type(model).__name__} has no [CLS] token; use pool='readout' (the positions "
                         "its classifier reads, averaged) or pool='mean' (the mean over its tokens)")  # fmt: skip
    return cls


def _load_clips(model, paths: list) -> Tensor:
    from vivit_lens.io import video

    clips = [video.load(p, num_frames=model.cfg.num_frames) for p in paths]
    return video.preprocess(clips, model.processor)


def _batches(clips, batch_size: int) -> Iterator[Tensor | list]:
    """Tensors as given (a `[n ...]` tensor is split into `batch_size` clips); runs of paths in lists of `batch_size`."""
    if isinstance(clips, Tensor):
        yield from clips.split(batch_size)
        return
    paths: list = []
    for c in clips:
        if isinstance(c, (str, os.PathLike)):
            paths.append(c)
            if len(paths) == batch_size:
                yield paths
                paths = []
            continue
        if paths:
            yield paths
            paths = []
        if not isinstance(c, Tensor):
            raise TypeError(f"clips must be pixel tensors or video paths, got {type(c).__name__}")
        yield c
    if paths:
        yield paths


def collect_activations(
    model,
    clips: Tensor | Iterable[Tensor] | Iterable[str | os.PathLike],
    *,
    layers: Sequence[int] | None = None,
    act: str = "resid_post",
    pool: str = "readout",
    batch_size: int = 4,
    progress: bool = True,
    return_top1: bool = False,
    runner=None,
) -> Float[Tensor, "layer n d_model"] | tuple[Float[Tensor, "layer n d_model"], Int[Tensor, "n"]]:
    """Per-layer activations of many clips, pooled to one vector per clip: `[layer n d_model]`.

    `clips`: pixel values `[n frames channels height width]`, an iterable (a list, a generator) of such
    batches or of single clips `[frames channels height width]`, or of video file paths (loaded and
    preprocessed with the model's processor, `batch_size` at a time, where the batch runs). `act`:
    `resid_post` (default: layer l's output), `resid_pre`, `resid_mid`, `attn_out`, `mlp_out`. `pool`:
    `"cls"` (the [CLS] token; a model without one: a ValueError), `"mean"` (mean over the tubelet tokens, [CLS]
    excluded) or `"readout"` (mean over the positions the classifier reads, `model.readout_positions`, before its
    norm: [CLS] on ViViT, every token for a mean-pooled VideoMAE). The forward stops after the
    last layer needed, unless `return_top1`: then it runs to the logits and also returns every clip's top-1
    class `[n]`. `runner`: a `vivit_lens.distributed` runner (e.g. `RayRunner(model, workers=4)`) to spread the
    batches over model replicas; the result is the same, in the clips' order. Activations stay on the model's
    device (the workers' results come back on the CPU).
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be 'cls', 'mean' or 'readout', got {pool!r}")
    if pool == "cls":
        _cls_of(model)  # before any compute
    layers = list(range(model.cfg.n_layers)) if layers is None else [int(l) for l in layers]
    job = _BatchActivations(tuple(get_act_name(act, l) for l in layers), pool, return_top1)
    batches = _batches(clips, batch_size)
    if runner is None:
        results = [job(model, b) for b in tqdm(batches, desc="collecting", disable=not progress, leave=False)]
    else:
        from vivit_lens.study.distributed import Failed, WorkerError

        results = runner.map(job, batches, desc="collecting", progress=progress)
        failed = [(i, r) for i, r in enumerate(results) if isinstance(r, Failed)]
        if failed:
            raise WorkerError(f"{len(failed)} of {len(results)} batches of clips failed; batch {failed[0][0]}: "
                              f"{failed[0][1].error}")  # fmt: skip
    if not results:
        raise ValueError("collect_activations got no clips")
    out = torch.cat([r[0] for r in results], dim=1)
    return (out, torch.cat([r[1] for r in results])) if return_top1 else out


__all__ = ["ProbeResults", "best_record", "bootstrap_ci", "collect_activations", "fit_probe", "grouped_cv_probes",
           "split_indices", "train_probes", "transfer_probes"]
