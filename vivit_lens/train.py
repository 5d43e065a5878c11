"""Train a small ViViT on the synthetic action clips, with the project's own `HookedViViT`, on CPU.

The label is the class (`synthetic.LABELS`): the action for the six action scenes, whose outcomes are
drawn at random and never reach the loss, and the outcome itself for the two event scenes (`skittles`,
`marble`), which is how the model comes to detect falling pins and dropping balls at all.
The model sees exactly what `video.preprocess` makes of the uint8 frames, and is written as an HF
folder (config.json, model.safetensors, preprocessor_config.json) plus `training.json`, the record
of the run (command, seed, steps, wall time, accuracies, versions).

    vivit-lens train --out my_model --seed 0               # a first stage (or: python -m vivit_lens.train ...)
    result = train(TrainConfig(steps=20, n_train=64))       # in Python: model, losses, accuracies
    x, y = heldout_clips(240)                               # clips from seeds no training set draws

Seeds. `synthetic.dataset(n, seed)` draws each clip's render seed from [0, 2**31); held-out clips
are rendered from seeds >= 2**31 (`HELDOUT_SEED`), so they can never coincide with a training clip.
Reproducibility: the same seed gives bit-identical weights with the same torch version, thread
count (`--threads`), attention backend and kind of CPU; elsewhere the run is statistically, not bitwise, the same
(on another CPU the shipped recipe's losses part from the record's within 100-225 steps, whatever MKL or ATen
instruction set is forced: benchmarks/results/recipe_rerun.json).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Int64, UInt8
from torch import nn
from tqdm.auto import tqdm

from vivit_lens import synthetic
from vivit_lens.io import video
from vivit_lens.models.auto import from_pretrained
from vivit_lens.models.config import ProcessorConfig, ViViTConfig
from vivit_lens.models.videomae import HookedVideoMAE
from vivit_lens.models.videomae_config import VideoMAEConfig, videomae_processor
from vivit_lens.models.vivit import HookedViViT

logger = logging.getLogger(__name__)

HELDOUT_SEED = 2**31  # synthetic.dataset draws clip seeds below this; held-out clips use seeds from here on
MONITOR_SEED = HELDOUT_SEED + 2**20  # the training-time outcome monitor's pairs (after the held-out clips)
PROBE_DOMAINS = ("bowling", "golf_putt")  # the action scenes whose hidden outcome the project studies
Clips = UInt8[np.ndarray, "n frames height width 3"]
ARCHS = ("vivit", "videomae")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; `training.json` records it whole."""

    seed: int = 0
    # data
    n_train: int = 10000
    n_eval: int = 240
    frames: int = 16
    size: int = 64
    flip: bool = True  # augmentation: mirror a clip left-right (the renderer draws both orientations)
    # model: "vivit" (HookedViViT, [CLS] readout) or "videomae" (HookedVideoMAE: no [CLS], fixed sinusoidal
    # positions, no key bias, mean pooling then fc_norm, ImageNet normalisation), the same sizes otherwise
    arch: str = "vivit"
    # 2x16x16 tubelets: 8 x 4 x 4 tokens. With 2x8x8 (512 tokens) a step costs ~4x more, and in 500 steps of the
    # event scenes the outcome loss never left chance (ln 2); these tokens learn it within the time budget.
    tubelet: tuple[int, int, int] = (2, 16, 16)
    hidden: int = 64
    layers: int = 6
    heads: int = 4
    mlp_ratio: int = 4
    # Weight init std; None: hidden ** -0.5. (timm's 0.02 is ~0.55 / sqrt(768), sized for ViT-B; at hidden 64
    # it leaves every attention logit near 0 and the loss sits at chance for hundreds of steps.)
    init_std: float | None = None
    # optimisation
    steps: int = 6000
    # Curriculum: the first `event_steps` steps draw batches from the event scenes (skittles, marble) only, whose
    # labels are outcomes, so the model must find falling pins and dropping balls before the actions' scene
    # layouts can take the loss down without them (measured: with all classes from step 0, the event classes
    # sat at chance for 1000 steps). Bowling and golf_putt labels stay outcome-blind throughout.
    event_steps: int = 2000
    batch_size: int = 16
    lr: float = 1.5e-3
    min_lr: float = 1e-5
    warmup: int = 60
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    # Self-supervised change target (0: off): the readout must also predict, through a linear decoder used only
    # in training, what changed between the clip's start and its end: each 8x8-pixel cell's absolute change of
    # mean colour from the first two frames to the last two (`change_map`). The target is the same function of the
    # pixels for every class, so no label (and no outcome) enters it; it makes the readout keep what happened, as
    # large-scale pretraining makes a Kinetics model's features keep more than its labels need. (Measured,
    # benchmarks/RESULTS.md: alone it leaves the probes where they were; with event_setting it is part of the
    # shipped models' stages 3 and 4, which raised the bowling probe.)
    change_weight: float = 0.0
    change_cell: int = 8
    # The share of event clips rendered in the actions' settings (synthetic.EVENT_ZOOM's note; 0: bare scenes).
    event_setting: float = 0.0
    # The share of marble clips rendered as a putt without its club (synthetic.EVENT_ZOOM's note; 0: none).
    putt_marbles: float = 0.0
    # A second stage: start from this folder's weights (a model this script wrote) instead of a fresh init.
    init_from: str | None = None
    # runtime
    threads: int = 2
    attention: str = "math"  # scaled-dot-product backend while training: "math", "flash" or "default"
    eval_every: int = 1000  # held-out evaluation every k steps (0: only at the end)
    # Measurement only (never a loss): at each evaluation, a grouped 5-fold outcome probe on [CLS] over this
    # many fresh bowling and golf_putt pairs (seeds from MONITOR_SEED on), to see outcome knowledge emerge.
    probe_pairs: int = 40
    progress: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "tubelet", tuple(int(t) for t in self.tubelet))
        if self.arch not in ARCHS:
            raise ValueError(f"arch must be one of {ARCHS}, got {self.arch!r}")
        if self.attention not in ("math", "flash", "default"):
            raise ValueError(f"attention must be 'math', 'flash' or 'default', got {self.attention!r}")
        if self.change_weight < 0:
            raise ValueError(f"change_weight must be >= 0, got {self.change_weight}")
        if self.change_weight and (self.change_cell < 1 or self.size % self.change_cell):
            raise ValueError(f"the change target needs size a multiple of change_cell, got {self.size} px and "
                             f"change_cell {self.change_cell}")
        for name in ("event_setting", "putt_marbles"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.steps < 1 or self.batch_size < 1 or self.n_train < 1:
            raise ValueError(f"steps, batch_size and n_train must be >= 1, got steps {self.steps}, batch_size "
                             f"{self.batch_size} and n_train {self.n_train}")
        if not (math.isfinite(self.lr) and self.lr > 0) or not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"lr must be > 0 and min_lr in [0, lr], got lr {self.lr} and min_lr {self.min_lr}")
        for name in ("warmup", "event_steps", "n_eval", "eval_every", "weight_decay", "grad_clip"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if 0 < self.probe_pairs < 5:
            raise ValueError(f"probe_pairs must be 0 (no outcome monitor) or >= 5 (its probe is 5-fold over pairs), "
                             f"got {self.probe_pairs}")


@dataclass
class TrainResult:
    model: HookedViViT
    losses: list[float]  # training loss of every step (classification plus the weighted change loss)
    train_accuracy: float  # on (up to) 600 training clips, after training
    heldout_accuracy: float | None  # on `n_eval` clips from held-out seeds (None when n_eval = 0)
    heldout_loss: float | None
    wall_seconds: float
    history: list[dict[str, Any]]  # periodic held-out evaluations (and the outcome monitor)


def model_config(tc: TrainConfig) -> ViViTConfig:
    """The architecture of `tc.arch` at the run's sizes (a VideoMAEConfig for "videomae")."""
    config_class = VideoMAEConfig if tc.arch == "videomae" else ViViTConfig
    return config_class(
        image_size=tc.size, num_frames=tc.frames, tubelet_size=tc.tubelet, hidden_size=tc.hidden,
        num_hidden_layers=tc.layers, num_attention_heads=tc.heads, intermediate_size=tc.mlp_ratio * tc.hidden,
        hidden_act="gelu_fast", layer_norm_eps=1e-6, qkv_bias=True,
        id2label=dict(enumerate(synthetic.LABELS)), initializer_range=0.02,
    )


# The published VideoMAE checkpoints (MCG-NJU/videomae-*) normalise with ImageNet's mean and std.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def processor_config(tc: TrainConfig) -> ProcessorConfig:
    """The architecture's image processor at the clip size (resize and crop are the identity on size x size
    frames): VivitImageProcessor's chain, or VideoMAEImageProcessor's with ImageNet statistics."""
    if tc.arch == "videomae":
        return dataclasses.replace(videomae_processor(crop_size=(tc.size, tc.size)), shortest_edge=tc.size,
                                   image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD)
    return ProcessorConfig(shortest_edge=tc.size, crop_size=(tc.size, tc.size))


def new_model(tc: TrainConfig) -> HookedViViT:
    """An untrained model of `tc.arch` (its class's construction values; `init_weights_` draws the weights)."""
    model_class = HookedVideoMAE if tc.arch == "videomae" else HookedViViT
    return model_class(model_config(tc), processor_config(tc))


def init_weights_(model: HookedViViT, generator: torch.Generator, std: float) -> HookedViViT:
    """Truncated normal (std, cut at 2 std) for every projection, zero biases, normal(std) for the
    [CLS] token and learned position embeddings (where the model has them), LayerNorm weight 1 and bias 0."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std, generator=generator)
                if module.bias is not None:
                    module.bias.zero_()
        if hasattr(model.embed, "cls_token"):  # VideoMAE has none
            model.embed.cls_token.normal_(0, std, generator=generator)
        if isinstance(model.pos_embed.W_pos, nn.Parameter):  # VideoMAE's is a fixed sinusoidal table
            model.pos_embed.W_pos.normal_(0, std, generator=generator)
        nn.init.trunc_normal_(model.unembed.W_U, std=std, a=-2 * std, b=2 * std, generator=generator)
        model.unembed.b_U.zero_()  # LayerNorms keep their construction values: weight 1, bias 0
    return model


def heldout_clips(n: int, frames: int = 16, size: int = 64, start: int = HELDOUT_SEED, event_setting: float = 0.0,
                  putt_marbles: float = 0.0) -> tuple[Clips, Int64[np.ndarray, " n"]]:
    """`n` clips rendered from seeds `start, start + 1, ...` (>= 2**31 by default, so never a
    `synthetic.dataset` clip), classes in turn (balanced); an action scene's outcome is drawn from its seed."""
    if start < HELDOUT_SEED:
        raise ValueError(f"held-out seeds must be >= {HELDOUT_SEED} (synthetic.dataset draws below it), got {start}")
    table = synthetic.classes()
    clips, labels = [], []
    for i in range(n):
        _, action, outcome = table[i % len(table)]
        clip, spec = synthetic.render(action, start + i, outcome=outcome, frames=frames, size=size,
                                      event_setting=event_setting, putt_marbles=putt_marbles)
        clips.append(clip)
        labels.append(spec.label)
    return np.stack(clips), np.array(labels, np.int64)


def outcome_pairs(action: str, n: int, frames: int = 16, size: int = 64, start: int = MONITOR_SEED,
                  ) -> tuple[Clips, np.ndarray, np.ndarray]:
    """`n` minimal pairs of `action` from seeds `start, start + 1, ...`: clips [2n ...] (clean, corrupt of
    each pair in turn), outcome labels (1 = success, 0 = failure) and pair ids, for outcome probes."""
    clips = []
    for i in range(n):
        clean, corrupt, _ = synthetic.render_pair(action, start + i, frames, size)
        clips += [clean, corrupt]
    return np.stack(clips), np.tile([1, 0], n), np.repeat(np.arange(n), 2)


@torch.no_grad()
def outcome_probe_accuracy(model: HookedViViT, pairs: dict[str, tuple[Clips, np.ndarray, np.ndarray]],
                           processor: ProcessorConfig) -> dict[str, list[float]]:
    """Per domain, the grouped 5-fold outcome probe's held-out accuracy at every layer, on the residual at the
    readout positions ([CLS] for ViViT, the token mean for VideoMAE; `probes.grouped_cv_probes`); a measurement,
    never a training signal."""
    from vivit_lens.interp.probes import collect_activations, grouped_cv_probes

    was_training = model.training
    model.eval()
    out = {}
    for domain, (clips, y, groups) in pairs.items():
        acts = collect_activations(model, to_pixels(clips, processor), pool="readout", batch_size=16, progress=False)
        recs = grouped_cv_probes(acts, torch.from_numpy(y), torch.from_numpy(groups), k=5, n_boot=200)
        out[domain] = [round(r["test"], 4) for r in recs]
    model.train(was_training)
    return out


def to_pixels(frames: np.ndarray, processor: ProcessorConfig) -> torch.Tensor:
    """Model input for uint8 clips [batch frames height width 3]: `video.preprocess` itself."""
    return video.preprocess(frames, processor)


@torch.no_grad()
def evaluate(model: HookedViViT, x: Clips, y: np.ndarray, processor: ProcessorConfig,
             batch_size: int = 32) -> tuple[float, float]:
    """(accuracy, mean cross-entropy) of `model` on uint8 clips `x` with labels `y`."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    for i in range(0, len(x), batch_size):
        logits = model(to_pixels(x[i:i + batch_size], processor))
        target = torch.from_numpy(y[i:i + batch_size])
        correct += int((logits.argmax(-1) == target).sum())
        loss += float(F.cross_entropy(logits, target, reduction="sum"))
    model.train(was_training)
    return correct / len(x), loss / len(x)


CHANGE_SCALE = 0.16  # about the variance of `change_map` values over synthetic.dataset clips: the loss starts near 1


def change_map(pixels: torch.Tensor, cell: int = 8) -> Float[torch.Tensor, "batch cells"]:
    """The self-supervised change target of a clip batch [batch frames channels height width]: each
    `cell` x `cell` pixel cell's mean colour over the last two frames minus over the first two, absolute,
    summed over channels; flattened (row, column). Averaging over a cell and two frames first makes pixel
    noise and one-pixel camera jitter small against what moved, appeared or vanished."""
    b, t, c, h, w = pixels.shape
    cells = F.avg_pool2d(pixels.reshape(b * t, c, h, w), cell).reshape(b, t, c, h // cell, w // cell)
    return (cells[:, -2:].mean(1) - cells[:, :2].mean(1)).abs().sum(1).flatten(1)


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warmup to `lr`, then cosine decay to `min_lr` at the last step."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    progress = (step - tc.warmup) / max(1, tc.steps - tc.warmup - 1)
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * min(1.0, progress)))


def _attention_backend(name: str):
    if name == "default":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(SDPBackend.MATH if name == "math" else SDPBackend.FLASH_ATTENTION)


def _batches(n: int, batch_size: int, generator: torch.Generator):
    """Endless minibatch indices: a fresh permutation of the training set every epoch."""
    while True:
        perm = torch.randperm(n, generator=generator).numpy()
        for i in range(0, n - batch_size + 1, batch_size):
            yield perm[i:i + batch_size]


def train(tc: TrainConfig, data: tuple[Clips, np.ndarray] | None = None) -> TrainResult:
    """Train a fresh model per `tc`; `data` (uint8 clips, labels) replaces the generated training set."""
    t0 = time.perf_counter()
    torch.set_num_threads(tc.threads)
    torch.manual_seed(tc.seed)
    cfg, processor = model_config(tc), processor_config(tc)
    gen = torch.Generator().manual_seed(tc.seed)  # the model first: a bad --init-from fails before any rendering
    if tc.init_from:
        model = from_pretrained(tc.init_from)
        if model.cfg != cfg:
            raise ValueError(f"{tc.init_from} holds another architecture than this run's: {model.cfg} vs {cfg}")
    else:
        model = init_weights_(new_model(tc), gen, tc.init_std or tc.hidden**-0.5)
    if data is None:
        logger.info("rendering %d training clips (seed %d, %d frames, %dx%d)", tc.n_train, tc.seed, tc.frames,
                    tc.size, tc.size)
        data = synthetic.dataset(tc.n_train, seed=tc.seed, frames=tc.frames, size=tc.size,
                                 event_setting=tc.event_setting, putt_marbles=tc.putt_marbles)
    x_train, y_train = data
    if len(x_train) < tc.batch_size:
        raise ValueError(f"the training set ({len(x_train)} clips) is smaller than one batch ({tc.batch_size})")
    x_eval, y_eval = heldout_clips(tc.n_eval, tc.frames, tc.size, event_setting=tc.event_setting,
                                   putt_marbles=tc.putt_marbles) \
        if tc.n_eval else (None, None)
    monitor = {a: outcome_pairs(a, tc.probe_pairs, tc.frames, tc.size) for a in PROBE_DOMAINS} if tc.probe_pairs else {}

    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %d layers, %d heads, d_model %d, %d tokens, %d parameters", cfg.n_layers, cfg.n_heads,
                cfg.d_model, cfg.n_pos, n_params)
    # The change decoder is trained with the model and then dropped: the shipped model is the classifier alone.
    decoder = nn.Linear(cfg.d_model, (tc.size // tc.change_cell) ** 2) if tc.change_weight else None
    if decoder is not None:  # drawn only when used, so runs without it keep their batches
        with torch.no_grad():
            nn.init.trunc_normal_(decoder.weight, std=0.02, a=-0.04, b=0.04, generator=gen)
            decoder.bias.zero_()
    params = [*model.parameters(), *(decoder.parameters() if decoder is not None else ())]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, 0.999))
    flip_rng = np.random.default_rng([tc.seed, 1])
    batches = _batches(len(x_train), tc.batch_size, gen)
    events = np.flatnonzero(np.isin(y_train, [label for label, _, outcome in synthetic.classes() if outcome]))
    if tc.event_steps and len(events) < tc.batch_size:
        raise ValueError(f"event_steps needs at least one batch of event-scene clips, got {len(events)}")
    event_batches = (events[i] for i in _batches(len(events), tc.batch_size, gen)) if tc.event_steps else None
    losses: list[float] = []
    history: list[dict[str, float]] = []
    bar = tqdm(range(tc.steps), desc="train", disable=not tc.progress, mininterval=2.0)
    with _attention_backend(tc.attention):
        for step in bar:
            idx = next(event_batches) if step < tc.event_steps else next(batches)
            clips = x_train[idx]
            if tc.flip:
                mirror = flip_rng.random(len(idx)) < 0.5
                clips = np.where(mirror[:, None, None, None, None], clips[:, :, :, ::-1], clips)
            pixels, target = to_pixels(clips, processor), torch.from_numpy(y_train[idx])
            for group in opt.param_groups:
                group["lr"] = lr_at(step, tc)
            readout = model.readout(model(pixels, return_type="resid"))
            loss = F.cross_entropy(model.unembed(readout), target)
            if decoder is not None:
                change = F.mse_loss(decoder(readout), change_map(pixels, tc.change_cell)) / CHANGE_SCALE
                loss = loss + tc.change_weight * change
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if tc.grad_clip:
                nn.utils.clip_grad_norm_(params, tc.grad_clip)
            opt.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", lr=f"{lr_at(step, tc):.1e}", refresh=False)
            if (step + 1) % 25 == 0 or step + 1 == tc.steps:
                logger.info("step %d/%d  loss %.4f (mean of last 25)  lr %.2e  %.0fs", step + 1, tc.steps,
                            np.mean(losses[-25:]), lr_at(step, tc), time.perf_counter() - t0)
            if tc.eval_every and x_eval is not None and (step + 1) % tc.eval_every == 0 and step + 1 < tc.steps:
                acc, eval_loss = evaluate(model, x_eval, y_eval, processor)
                entry = {"step": step + 1, "heldout_accuracy": acc, "heldout_loss": eval_loss}
                if monitor:
                    entry["outcome_probe_by_layer"] = outcome_probe_accuracy(model, monitor, processor)
                history.append(entry)
                logger.info("step %d: held-out accuracy %.4f, loss %.4f, outcome probe %s", step + 1, acc, eval_loss,
                            entry.get("outcome_probe_by_layer"))
    model.eval()
    n_check = min(len(x_train), 600)
    train_acc, _ = evaluate(model, x_train[:n_check], y_train[:n_check], processor)
    heldout_acc, heldout_loss = evaluate(model, x_eval, y_eval, processor) if x_eval is not None else (None, None)
    if monitor:
        final = outcome_probe_accuracy(model, monitor, processor)
        history.append({"step": tc.steps, "heldout_accuracy": heldout_acc, "heldout_loss": heldout_loss,
                        "outcome_probe_by_layer": final})
        logger.info("final outcome probe (grouped 5-fold, %d pairs per domain): %s", tc.probe_pairs, final)
    wall = time.perf_counter() - t0
    logger.info("done in %.0fs: train accuracy %.4f (%d clips), held-out accuracy %s", wall, train_acc, n_check,
                heldout_acc)
    return TrainResult(model, losses, train_acc, heldout_acc, heldout_loss, wall, history)


def cpu_name() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what `platform` knows: bitwise reproduction needs its kind."""
    info = Path("/proc/cpuinfo")
    for line in info.read_text().splitlines() if info.exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


TRAIN_COMMANDS = (("python", "-m", "vivit_lens.train"), ("vivit-lens", "train"))  # the same command, two spellings


def train_arguments(command: str) -> list[str] | None:
    """The arguments of a training command line (as a record's `command` or `recipe.commands` writes it), without
    `--no-progress`, which changes no result; None for a line that is no training command."""
    words = shlex.split(command, comments=True)
    for prefix in TRAIN_COMMANDS:
        if tuple(words[:len(prefix)]) == prefix:
            return [w for w in words[len(prefix):] if w != "--no-progress"]
    return None


def recipe_arguments(record: dict[str, Any]) -> list[list[str]]:
    """The arguments of every training stage of a record's `recipe.commands`, in order."""
    return [a for a in map(train_arguments, record["recipe"]["commands"]) if a is not None]


def training_record(tc: TrainConfig, result: TrainResult, command: str | None = None) -> dict[str, Any]:
    """The JSON record of a run: what ran, on what, and what came out."""
    return {
        "command": command,
        "seed": tc.seed,
        "steps": tc.steps,
        "train_config": dataclasses.asdict(tc),
        "wall_seconds": round(result.wall_seconds, 1),
        "train_accuracy": result.train_accuracy,
        "train_accuracy_clips": min(tc.n_train, 600),
        "heldout_accuracy": result.heldout_accuracy,
        "heldout_loss": result.heldout_loss,
        "heldout_clips": tc.n_eval,
        "heldout_seeds": f"[{HELDOUT_SEED}, {HELDOUT_SEED + tc.n_eval}) with synthetic.render; classes in turn",
        "labels": list(synthetic.LABELS),
        "outcome_labels_in_loss": "none for the action scenes: a bowling or golf_putt clip's label is its action, "
                                  "whatever its outcome (synthetic.label_of); event scenes are labelled by outcome",
        "self_supervised_loss": (f"change_weight {tc.change_weight} x the change map's mean squared error / "
                                 f"{CHANGE_SCALE} (train.change_map, {tc.change_cell}-pixel cells; from pixels only)"
                                 if tc.change_weight else None),
        "outcome_monitor": f"grouped 5-fold readout probe on {tc.probe_pairs} pairs per domain from seed "
                           f"{MONITOR_SEED} on; measured only, never a loss",
        "train_seeds": f"synthetic.dataset(n={tc.n_train}, seed={tc.seed}) (clip seeds drawn below {HELDOUT_SEED})",
        "final_loss_mean_last_25": float(np.mean(result.losses[-25:])),
        "loss_every_25_steps": [round(float(np.mean(result.losses[i:i + 25])), 4)
                                for i in range(0, len(result.losses), 25)],
        "history": result.history,
        "n_parameters": sum(p.numel() for p in result.model.parameters()),
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python_version": platform.python_version(),
        "threads": tc.threads,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu": cpu_name(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "reproducibility": "bit-identical weights need the same torch version, thread count, attention backend and "
                           "kind of CPU",
    }


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The training options, one per `TrainConfig` field (the `vivit-lens train` command's)."""
    d = TrainConfig()
    p.add_argument("--out", type=Path, required=True, help="folder to write the HF model and training.json into")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a non-empty --out folder (only once the new model is complete)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("progress", "tubelet", "flip", "init_std", "init_from"):
            continue
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(getattr(d, f.name)), default=getattr(d, f.name))
    p.add_argument("--tubelet", type=int, nargs=3, default=list(d.tubelet), metavar=("T", "H", "W"))
    p.add_argument("--init-std", type=float, default=None, help="weight init std (default: hidden ** -0.5)")
    p.add_argument("--init-from", default=None, metavar="FOLDER",
                   help="start from the weights of a model this command wrote (a second training stage)")
    p.add_argument("--no-flip", action="store_true", help="no left-right mirroring augmentation")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--quiet", action="store_true", help="print nothing but errors")


def config_from_args(args: argparse.Namespace, progress: bool = True) -> TrainConfig:
    """The `TrainConfig` of parsed `add_arguments` options (ValueError for bad settings)."""
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)
              if f.name not in ("progress", "flip")}
    kwargs["tubelet"] = tuple(kwargs["tubelet"])
    if kwargs["init_from"] and not (Path(kwargs["init_from"]) / "training.json").is_file():
        raise FileNotFoundError(f"--init-from {kwargs['init_from']}: no training.json there (not a folder this "
                                "command wrote)")
    return TrainConfig(**kwargs, flip=not args.no_flip, progress=progress)


def write_run(folder: Path, tc: TrainConfig, result: TrainResult, command: str) -> None:
    """The trained model as an HF folder, and its `training.json` (with every earlier stage's record)."""
    result.model.save_pretrained(folder)
    record = training_record(tc, result, command)
    if tc.init_from:  # the whole recipe: the earlier stage's record, and the wall time of both
        earlier = json.loads((Path(tc.init_from) / "training.json").read_text())
        record["earlier_stages"] = [*earlier.pop("earlier_stages", []), earlier]
        record["total_wall_seconds"] = round(record["wall_seconds"] + sum(
            r["wall_seconds"] for r in record["earlier_stages"]), 1)
    (folder / "training.json").write_text(json.dumps(record, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    """`python -m vivit_lens.train ...` is `vivit-lens train ...`."""
    from vivit_lens.study.cli import main as cli_main

    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
