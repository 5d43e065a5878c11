"""The paper's analysis of a minimal pair as one library call, and the same measurements over many pairs.

    pair = load_pair(model, "strike.mp4", "gutter.mp4")            # checks, preprocesses, finds the region
    res = analyze_pair(model, pair.clean, pair.corrupt, region=pair.region)   # a JSON-ready dict of every number
    st = study(model, {"bowling": generate_pairs(model, "bowling", 20)})      # means with 95% bootstrap CIs

`analyze_pair` runs, on one clean (success) / corrupt (failure) pair: top-k predictions, the
per-layer L2 norm of the activation delta (the "amplification cascade"), direct logit attribution
(per component, per head, per source token), [CLS] attention of the strongest heads, region
ablation (pixels and tokens, the paper's Table 1), activation patching of every attention and MLP
block and of every head, scored as % of the clean - corrupt signal recovered (the paper's Table 2),
path patching (heads into the MLPs that compose the signal; direct paths to the final residual),
and attribution patching compared with the exact numbers. Every number comes from the public
APIs of `patching`, `paths`, `attribution`, `ablation`, `measure` and `ActivationCache`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

STEPS = ("predictions", "cascade", "dla", "attention", "ablation", "patching", "heads", "paths", "attribution")
STUDY_STEPS = ("predictions", "cascade", "dla", "attention", "ablation", "patching", "heads")
PROBE_CI_HALF_WIDTH = 0.08  # a study whose best-layer probe CI is wider than +-this is flagged as too small

RECOVERY_FORMULA = (
    "recovery(%) = 100 * <r_patched - r_corrupt, r_clean - r_corrupt> / ||r_clean - r_corrupt||^2, "
    "r = residual stream at {hook} (positions {positions}), flattened; the corrupt run with one "
    "component's output replaced by its clean value. 0% = corrupt run, 100% = clean run."
)
DEFINITIONS = {
    "clean / corrupt": "clean = the success clip (e.g. strike), corrupt = the failure clip (e.g. gutter ball); "
                       "patching runs the corrupt clip and patches in clean activations (denoising).",
    "delta_cascade": "for each layer l and hook, the L2 norm of act_clean - act_corrupt over d_model: at the [CLS] "
                     "token ('cls') and averaged over all tokens ('token_mean', Figure 1 of the paper).",
    "dla": "direct logit attribution: each component's write to the final [CLS] residual, centred and divided by "
           "the final LayerNorm scale of the run (frozen), dotted with ln_final.w * W_U[:, class]; the components "
           "plus 'bias' sum to the logit exactly.",
    "dla_tokens": "the part of every head's [CLS] output read from each source token "
                  "(pattern[h, CLS, s] * v[s, h] @ W_O[h]), attributed to the class logit as above and summed over "
                  "layers and heads; map[t][row][col] is the tubelet at time t, token row and column.",
    "cls_attention": "softmax attention weight of the [CLS] query on each tubelet token, per layer and head.",
    "region": "the outcome region: a pixel box x0,y0,x1,y1 (model-input pixels, x1 and y1 exclusive) in input "
              "frames [a, b), and the tubelet tokens that touch it.",
    "region_mass": "sum of a head's [CLS] attention on the region's tokens; region_mass_ratio divides it by the "
                   "share uniform attention would put there.",
    "ablation_pixels": "the region's pixels set to 0 in the model's normalised input space (what 'zeroing' "
                       "pixel_values does; grey for the default preprocessing), then a forward pass.",
    "ablation_tokens": "the region's tokens set to 0 at blocks.0.hook_resid_pre (embedding + position "
                       "embedding), then a forward pass.",
    "recovery_norm": "100 * ||r_patched - r_corrupt|| / ||r_clean - r_corrupt||: direction-blind size of the change.",
    "path_effect": "path patching (frozen): the sender's clean-minus-corrupt write reaches only the receiver, along the "
                   "direct residual path; every other component keeps its corrupt value. Same % units as recovery. "
                   "A head in layer L writes after MLP l < L reads: those paths do not exist (unreachable, not 0).",
    "attribution": "attribution patching: (a_clean - a_corrupt) . d(metric)/da in the corrupt run, the first-order "
                   "estimate of each patching effect; agreement = Pearson / Spearman correlation with the exact "
                   "values and the overlap of the k largest |values|.",
    "bootstrap_ci": "percentile bootstrap over pairs of the mean: resamples of the pairs with replacement (numpy); "
                    "[2.5%, 97.5%] quantiles of the resampled means.",
    "probe": "per-layer logistic-regression probe on the [CLS] residual (blocks.l.hook_resid_post) of clean and "
             "corrupt clips, label = outcome (1 = success, 0 = failure); test = accuracy of grouped k-fold "
             "out-of-fold predictions (a pair's two clips always in one fold), 95% CI by bootstrap over pairs; "
             "control = the same probe and folds with the labels permuted within each pair.",
    "transfer": "a probe trained on every pair of one domain (e.g. bowling outcomes) and tested on every pair of "
                "another (golf outcomes), each domain's features standardised with its own statistics: above "
                "chance means a shared 'success' direction.",
    "hidden": "the outcome is hidden from the label when both clips of a pair get the same top-1 class "
              "(same_top1_fraction) and that class is the action (action_accuracy, over both clips).",
}
# The terms each report uses (a report lists only the definitions that apply to it).
ANALYSIS_TERMS = ("clean / corrupt", "delta_cascade", "dla", "dla_tokens", "cls_attention", "region", "region_mass",
                  "ablation_pixels", "ablation_tokens", "recovery_norm", "path_effect", "attribution")
STUDY_TERMS = ("clean / corrupt", "delta_cascade", "region", "region_mass", "ablation_pixels", "ablation_tokens",
               "bootstrap_ci", "probe", "transfer", "hidden")


def definitions(kind: str, *, n_boot: int | None = None, seed: int | None = None) -> dict[str, str]:
    """The definitions an `"analysis"` or a `"study"` report uses; a study's bootstrap names its resamples and seed."""
    terms = {"analysis": ANALYSIS_TERMS, "study": STUDY_TERMS}[kind]
    out = {k: DEFINITIONS[k] for k in terms}
    if kind == "study" and n_boot is not None:
        out["bootstrap_ci"] = (f"percentile bootstrap over pairs of the mean: {n_boot} resamples of the pairs with "
                               f"replacement (numpy, seed {seed}); [2.5%, 97.5%] quantiles of the resampled means.")
    return out


class PairError(ValueError):
    """A clean/corrupt pair that cannot be analysed (missing, unreadable, mismatched)."""


# Regions ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Region:
    """Tubelet tokens of the outcome region, with its pixel box `(x0, y0, x1, y1)` and frames `[a, b)` of the model input."""

    positions: tuple[int, ...]
    box: tuple[int, int, int, int]
    frames: tuple[int, int]
    source: str

    @classmethod
    def from_box(cls, model, box: Sequence[int], frames: Sequence[int], source: str = "given") -> Region:
        """Tokens touching `box` (model-input pixels, ends exclusive) in input frames `[frames[0], frames[1])`."""
        cfg = model.cfg
        x0, y0, x1, y1 = (int(v) for v in box)
        a, b = (int(v) for v in frames)
        h, w = cfg.image_size
        if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
            raise PairError(f"region {tuple(box)} must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                            "(x0,y0,x1,y1 in model-input pixels, ends exclusive)")  # fmt: skip
        if not 0 <= a < b <= cfg.num_frames:
            raise PairError(f"frames {a}:{b} must satisfy 0 <= a < b <= {cfg.num_frames} (model-input frames)")
        pos = model.grid.positions(frames=range(a, b), box=(x0, y0, x1, y1))
        if len(pos) == 0:
            raise PairError(f"region {tuple(box)} in frames {a}:{b} covers no token (frames past the last whole "
                            "tubelet are seen by no token)")  # fmt: skip
        return cls(tuple(int(p) for p in pos), (x0, y0, x1, y1), (a, b), source)

    @classmethod
    def from_positions(cls, model, positions: Sequence[int], source: str) -> Region:
        """A token set, with the bounding pixel box and frame range of its tokens."""
        grid = model.grid
        pos = sorted(int(p) for p in positions)
        t, r, c = grid.pos_to_thw(torch.tensor(pos))
        tt, ph, pw = model.cfg.tubelet_size
        box = (int(c.min()) * pw, int(r.min()) * ph, (int(c.max()) + 1) * pw, (int(r.max()) + 1) * ph)
        frames = (int(t.min()) * tt, (int(t.max()) + 1) * tt)
        return cls(tuple(pos), box, frames, source)

    def to_dict(self) -> dict:
        return {"source": self.source, "box_xyxy": list(self.box), "frames": list(self.frames),
                "n_tokens": len(self.positions), "positions": list(self.positions)}  # fmt: skip


def region_from_difference(model, clean: Tensor, corrupt: Tensor, fraction: float = 0.25) -> Region:
    """The tubelet tokens whose embeddings differ most between the clips: `||e_clean - e_corrupt|| >= fraction * max`."""
    with torch.no_grad():
        _, cc = model.run_with_cache(clean, names_filter="hook_embed", stop_at_layer=0)
        _, cr = model.run_with_cache(corrupt, names_filter="hook_embed", stop_at_layer=0)
    delta = (cc["hook_embed"] - cr["hook_embed"])[0, 1:].norm(dim=-1)
    if float(delta.max()) == 0.0:
        raise PairError("the clean and corrupt clips are identical at the model's input: there is nothing to analyse")
    pos = (torch.nonzero(delta >= fraction * delta.max()).reshape(-1) + 1).tolist()
    return Region.from_positions(model, pos, f"tokens whose embedding differs most (>= {fraction:.0%} of the max)")


def region_from_spec(model, spec: Mapping, clip_indices: Sequence[int] | np.ndarray,
                     source_hw: Sequence[int]) -> Region | None:
    """Map a synthetic pair's `spec.json` (box = top, left, bottom, right in source pixels; decisive_frame in
    source frames) through the processor's resize and centre crop onto the model input; None if it falls outside."""
    from vivit_lens.video import resize_output_size

    try:
        top, left, bottom, right = (float(v) for v in spec["box"])
        decisive = int(spec["decisive_frame"])
    except (KeyError, TypeError, ValueError):
        return None
    proc, cfg = model.processor, model.cfg
    h, w = source_hw
    nh, nw = resize_output_size(h, w, proc.shortest_edge) if proc.do_resize else (h, w)
    sy, sx = nh / h, nw / w
    ch, cw = proc.crop_size if proc.do_center_crop else (nh, nw)
    oy, ox = (nh - ch) // 2, (nw - cw) // 2
    H, W = cfg.image_size
    x0, x1 = max(0, math.floor(left * sx - ox)), min(W, math.ceil(right * sx - ox))
    y0, y1 = max(0, math.floor(top * sy - oy)), min(H, math.ceil(bottom * sy - oy))
    later = [i for i, src in enumerate(clip_indices) if int(src) >= decisive]
    if x0 >= x1 or y0 >= y1 or not later:
        return None
    try:
        return Region.from_box(model, (x0, y0, x1, y1), (later[0], cfg.num_frames), "spec.json next to the videos")
    except PairError:
        return None


def spec_xyxy(spec: Mapping) -> dict:
    """A pair's spec for the outputs, its box in the one convention every output uses: `box_xyxy` = x0, y0, x1, y1
    (the synthetic renderer's `box` is top, left, bottom, right, in source pixels)."""
    out = {k: v for k, v in spec.items() if k != "box"}
    if "box" in spec:
        top, left, bottom, right = spec["box"]
        out["box_xyxy_source_pixels"] = [left, top, right, bottom]
    return out


# Pairs --------------------------------------------------------------------------------------------
@dataclass
class PairInput:
    """One minimal pair, preprocessed: pixel values `[1 frames channels height width]` of both clips."""

    name: str
    clean: Tensor
    corrupt: Tensor
    region: Region | None = None
    meta: dict = field(default_factory=dict)


def load_pair(model, clean_path: str | Path, corrupt_path: str | Path) -> PairInput:
    """Load, check and preprocess a pair of videos; the region comes from a `spec.json` beside them if any.

    Raises `PairError` (a ValueError) for a missing or unreadable file and for clips that differ in
    frame count or frame size.
    """
    from vivit_lens import video

    clips = {}
    for role, path in (("clean", clean_path), ("corrupt", corrupt_path)):
        try:
            clips[role] = video.load(path, num_frames=model.cfg.num_frames)
        except video.VideoError as e:
            raise PairError(f"{role} video: {e}") from None
    a, b = clips["clean"], clips["corrupt"]
    if a.frames.shape[1:3] != b.frames.shape[1:3]:
        raise PairError(f"the clips differ in frame size: clean {a.frames.shape[2]}x{a.frames.shape[1]}, corrupt "
                        f"{b.frames.shape[2]}x{b.frames.shape[1]} (width x height); a minimal pair must match")  # fmt: skip
    if a.n_source_frames != b.n_source_frames:
        raise PairError(f"the clips differ in length: clean has {a.n_source_frames} frames, corrupt "
                        f"{b.n_source_frames}; a minimal pair must have the same frames")  # fmt: skip
    pixels = video.preprocess([a, b], model.processor)
    clean, corrupt = pixels[:1], pixels[1:]
    meta: dict[str, Any] = {"clean": str(clean_path), "corrupt": str(corrupt_path),
                            "source_frames": int(a.n_source_frames), "source_size_hw": list(a.frames.shape[1:3]),
                            "sampled_frames": [int(i) for i in a.indices]}  # fmt: skip
    region = None
    spec_file = Path(clean_path).parent / "spec.json"
    if spec_file.is_file() and spec_file == Path(corrupt_path).parent / "spec.json":
        try:
            spec = json.loads(spec_file.read_text())
            region = region_from_spec(model, spec, a.indices, tuple(a.frames.shape[1:3]))
            meta["spec"] = spec_xyxy(spec)
        except (json.JSONDecodeError, OSError) as e:
            logger.warning("ignoring %s: %s", spec_file, e)
    return PairInput(Path(clean_path).parent.name or "pair", clean, corrupt, region, meta)


def generate_pairs(model, action: str, n: int, seed: int = 0, progress: bool = False) -> list[PairInput]:
    """`n` synthetic minimal pairs of `action` (seeds `seed .. seed+n-1`), rendered at the model's frame count and size."""
    from vivit_lens import synthetic, video

    if action not in synthetic.OUTCOMES:
        raise PairError(f"unknown action {action!r}; expected one of {synthetic.ACTIONS}")
    cfg = model.cfg
    size = tuple(max(s, synthetic.MIN_SIZE) for s in cfg.image_size)
    frames = max(cfg.num_frames, synthetic.MIN_FRAMES)
    pairs = []
    for i in tqdm(range(n), desc=f"rendering {action} pairs", disable=not progress, leave=False):
        clean, corrupt, spec = synthetic.render_pair(action, seed + i, frames=frames, size=size)
        indices = video.uniform_indices(frames, cfg.num_frames)
        pixels = video.preprocess([clean[indices], corrupt[indices]], model.processor)
        spec_d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(spec).items()}
        region = region_from_spec(model, spec_d, indices, size)
        pairs.append(PairInput(f"{action}-{seed + i}", pixels[:1], pixels[1:], region,
                               {"action": action, "seed": seed + i, "spec": spec_xyxy(spec_d)}))  # fmt: skip
    return pairs


def display_frames(pixels: Tensor, processor) -> np.ndarray:
    """uint8 frames `[frames height width 3]` for figures, by inverting the processor's rescale and normalisation."""
    x = pixels[0].detach().double().permute(0, 2, 3, 1).numpy()  # f h w c
    if processor is not None and processor.do_normalize:
        x = x * np.array(processor.image_std) + np.array(processor.image_mean)
    if processor is not None and processor.do_rescale:
        x = (x + (1 if processor.offset else 0)) / processor.rescale_factor
    else:
        lo, hi = x.min(), x.max()
        x = (x - lo) / (hi - lo + 1e-12) * 255
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def resolve_class(model, name: str | int | None) -> int | None:
    """A class index from a label name or an index (as text or int); KeyError naming close labels if unknown."""
    if name is None:
        return None
    if isinstance(name, int) or (isinstance(name, str) and name.strip().isdigit() and name not in model.cfg.label2id):
        idx = int(name)
        if 0 <= idx < model.cfg.n_classes:
            return idx
        raise KeyError(f"class index {idx} is out of range: the model has {model.cfg.n_classes} classes")
    if name in model.cfg.label2id:
        return model.cfg.label2id[name]
    import difflib

    close = difflib.get_close_matches(name, list(model.cfg.label2id), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else (
        f"; labels include {', '.join(map(repr, list(model.cfg.label2id)[:8]))}")
    raise KeyError(f"class {name!r} is not one of the model's {model.cfg.n_classes} classes{hint}")


# Helpers ------------------------------------------------------------------------------------------
def _list(t: Tensor | np.ndarray | float) -> Any:
    """Plain Python floats (nested lists) from a tensor or array; NaN/inf become None."""
    if isinstance(t, Tensor):
        t = t.detach().double().cpu().numpy()
    arr = np.asarray(t, dtype=float)
    if arr.ndim == 0:
        v = float(arr)
        return v if math.isfinite(v) else None
    return [_list(a) for a in arr]


def jsonable(obj: Any) -> Any:
    """A copy of `obj` that `json.dumps` writes as standard JSON: tensors as lists, non-finite floats as null."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, (Tensor, np.ndarray)):
        return _list(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def _topk(logits: Tensor, labels: Mapping[int, str], k: int) -> list[dict]:
    probs = logits.double().softmax(-1)[0]
    values, idx = logits[0].double().topk(min(k, logits.shape[-1]))
    return [{"rank": r + 1, "class_id": int(i), "label": labels.get(int(i), str(int(i))), "logit": float(v),
             "prob": float(probs[i])} for r, (v, i) in enumerate(zip(values, idx))]  # fmt: skip


def _signal_positions(model, which: str) -> tuple[int, ...]:
    """`"cls"` (the [CLS] token; a model without one: a ValueError naming the others), `"readout"` (the
    positions the classifier reads) or `"all"`."""
    if which == "cls" and model.grid.cls is not None:
        return (model.grid.cls,)
    if which == "readout":
        return tuple(model.readout_positions)
    if which == "all":
        return tuple(range(model.cfg.n_pos))
    no_cls = f" ({type(model).__name__} has no [CLS] token)" if which == "cls" else ""
    raise ValueError(f"signal_positions must be 'cls', 'readout' or 'all'{no_cls}, got {which!r}")


def _cache_names(n_layers: int, readout_norm: str = "ln_final") -> list[str]:
    names = ["hook_embed", "hook_pos_embed", f"{readout_norm}.hook_scale"]
    per_layer = ("hook_resid_pre", "hook_resid_mid", "hook_resid_post", "hook_attn_out", "hook_mlp_out",
                 "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z")  # fmt: skip
    return names + [f"blocks.{l}.{n}" for l in range(n_layers) for n in per_layer]


class _Steps:
    """Progress over the analysis steps, with the wall time of each."""

    def __init__(self, steps: Sequence[str], progress: bool, desc: str):
        self.bar = tqdm(total=len(steps), desc=desc, disable=not progress, leave=False)
        self.times: dict[str, float] = {}

    def __call__(self, name: str) -> _Step:
        return _Step(self, name)

    def close(self) -> None:
        self.bar.close()


class _Step:
    def __init__(self, steps: _Steps, name: str):
        self.steps, self.name = steps, name

    def __enter__(self) -> None:
        self.steps.bar.set_postfix_str(self.name)
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.steps.times[self.name] = time.perf_counter() - self.t0
        self.steps.bar.update(1)


# The analysis of one pair -------------------------------------------------------------------------
def analyze_pair(
    model,
    clean: Tensor,
    corrupt: Tensor,
    *,
    label: int | str | None = None,
    region: Region | None = None,
    signal_layer: int | None = None,
    signal_positions: str = "cls",
    top_heads: int = 4,
    n_composers: int = 3,
    k: int = 5,
    steps: Sequence[str] = STEPS,
    norm_recovery: bool = True,
    batch_size: int = 16,
    progress: bool = True,
) -> dict:
    """Every measurement of the paper on one pair; returns a JSON-ready dict (see the module docstring).

    `clean`, `corrupt`: pixel values `[1 frames channels height width]`. `label`: the class for the
    logit measurements (name or index; default: the model's top prediction on the clean clip).
    `region`: the outcome region for ablation and attention mass (default: the tokens whose
    embeddings differ most). `signal_layer`: where the patching signal is read (default: the last
    block's output); `signal_positions`: `"cls"` (the [CLS] token, default; a model
    without one: a ValueError), `"readout"` (the positions the classifier reads) or `"all"` tokens.
    `top_heads`: heads shown with [CLS] attention; `n_composers`: MLPs whose head inputs are path-patched.
    `steps`: a subset of `STEPS` (patching is needed by heads, paths and attribution). `norm_recovery`: also
    score the block patching with the direction-blind norm variant (two more sweeps).
    """
    from vivit_lens.metrics import SignalRecovery

    cfg = model.cfg
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise ValueError(f"unknown steps {sorted(unknown)}; expected a subset of {STEPS}")
    for name, x in (("clean", clean), ("corrupt", corrupt)):
        model._check_pixels(x)
        if x.shape[0] != 1:
            raise ValueError(f"{name} must be one clip (batch 1), got batch {x.shape[0]}")
    s = cfg.n_layers - 1 if signal_layer is None else int(signal_layer)
    if not 0 <= s < cfg.n_layers:
        raise ValueError(f"signal_layer must be in [0, {cfg.n_layers}), got {signal_layer}")
    signal_pos = _signal_positions(model, signal_positions)
    signal_hook = f"blocks.{s}.hook_resid_post"
    res: dict[str, Any] = {"signal": {"layer": s, "hook": signal_hook, "positions": signal_positions}}

    bar = _Steps(["forward", *steps], progress, "analyze")
    with bar("forward"), torch.no_grad():
        names = _cache_names(cfg.n_layers, model.readout_norm_name)
        logits_c, cache_c = model.run_with_cache(clean, names_filter=names)
        logits_r, cache_r = model.run_with_cache(corrupt, names_filter=names)
    cls = int(logits_c[0].argmax()) if label is None else (
        label if isinstance(label, int) else model.label_id(label))
    if not 0 <= cls < cfg.n_classes:
        raise ValueError(f"class index {cls} is out of range for {cfg.n_classes} classes")
    if region is None:
        region = region_from_difference(model, clean, corrupt)
    res["class"] = {"id": cls, "label": cfg.id2label.get(cls, str(cls)), "source": "given" if label is not None
                    else "top prediction on the clean clip"}  # fmt: skip
    res["region"] = region.to_dict()

    if "predictions" in steps:
        with bar("predictions"):
            res["predictions"] = {
                "clean": _topk(logits_c, cfg.id2label, k), "corrupt": _topk(logits_r, cfg.id2label, k),
                "class_logit": {"clean": float(logits_c[0, cls]), "corrupt": float(logits_r[0, cls])},
                "same_top1": int(logits_c[0].argmax()) == int(logits_r[0].argmax()),
            }  # fmt: skip
    if "cascade" in steps:
        with bar("cascade"):
            res["delta_cascade"] = _cascade(cache_c, cache_r, cfg.n_layers)
    if "dla" in steps:
        with bar("dla"):
            res["dla"] = _dla(model, cache_c, cache_r, cls, logits_c, logits_r)
    if "attention" in steps:
        with bar("attention"):
            res["cls_attention"] = _attention(model, cache_c, cache_r, cls, region, top_heads)
    if "ablation" in steps:
        with bar("ablation"):
            res["ablation"] = _ablation(model, clean, logits_c, region, cls, k)

    need_patch = {"patching", "heads", "paths", "attribution"} & set(steps)
    metric = None
    if need_patch:
        try:
            metric = SignalRecovery.from_caches(cache_c, cache_r, signal_hook, signal_pos)
        except ValueError as e:
            raise PairError(f"no signal to recover: {e}") from None
        res["patching"] = {"formula": RECOVERY_FORMULA.format(hook=signal_hook, positions=signal_positions),
                           "layers": list(range(s + 1))}  # fmt: skip
    opts = dict(batch_size=batch_size, progress=False)  # one bar on screen: the steps bar names the sweep it is in
    if "patching" in steps:
        with bar("patching"):
            res["patching"].update(_block_patching(model, corrupt, cache_c, cache_r, metric, s, signal_pos, norm_recovery,
                                                  opts))
    if "heads" in steps:
        with bar("heads"):
            from vivit_lens.patching import get_act_patch_attn_head_out_all_pos

            heads = get_act_patch_attn_head_out_all_pos(model, corrupt, cache_c, metric, layers=range(s + 1), **opts)
            res["patching"]["heads"] = _list(heads)
    if "paths" in steps:
        with bar("paths"):
            res["paths"] = _paths(model, clean, corrupt, metric, res, s, n_composers, opts)
    if "attribution" in steps:
        with bar("attribution"):
            res["attribution"] = _attribution(model, clean, corrupt, metric, res, s)
    bar.close()
    res["timings_s"] = dict(bar.times)
    return res


def _cascade(cache_c, cache_r, n_layers: int) -> dict:
    from vivit_lens.measure import DELTA_HOOKS, delta_norms

    norms = delta_norms(cache_c, cache_r, layers=list(range(n_layers)))
    out: dict[str, Any] = {"layers": list(range(n_layers)), "hooks": list(DELTA_HOOKS)}
    for i, hook in enumerate(norms.labels[0]):
        out[hook] = {"token_mean": _list(norms.values[i, :, 1]), "cls": _list(norms.values[i, :, 0])}
    tm = norms.values[list(norms.labels[0]).index("resid_post"), :, 1].double()
    out["resid_post"]["growth_vs_layer0"] = _list(tm / tm[0]) if float(tm[0]) > 0 else None
    e = (cache_c["hook_embed"] - cache_r["hook_embed"]).double().norm(dim=-1)
    readout = list(cache_c.cfg.readout_positions)
    out["embed"] = {"token_mean": float(e.mean()), "cls": float(e[:, readout].mean())}
    return out


def _dla(model, cache_c, cache_r, cls: int, logits_c: Tensor, logits_r: Tensor) -> dict:
    cfg = model.cfg
    out: dict[str, Any] = {"class_id": cls}
    comp_c, labels = cache_c.dla_components(cls, model=model)
    comp_r, _ = cache_r.dla_components(cls, model=model)
    out["components"] = {"labels": labels, "clean": _list(comp_c[:, 0]), "corrupt": _list(comp_r[:, 0]),
                         "sum_clean": float(comp_c[:, 0].sum()), "logit_clean": float(logits_c[0, cls]),
                         "sum_corrupt": float(comp_r[:, 0].sum()), "logit_corrupt": float(logits_r[0, cls])}  # fmt: skip
    out["heads"] = {"clean": _list(cache_c.dla_heads(cls, model=model)[..., 0]),
                    "corrupt": _list(cache_r.dla_heads(cls, model=model)[..., 0])}  # fmt: skip
    t, h, w = cfg.grid_shape
    maps, cls_self = {}, {}
    for name, cache in (("clean", cache_c), ("corrupt", cache_r)):
        per_pos = cache.dla_tokens(cls, model=model)[:, :, 0].sum((0, 1))  # [pos]
        maps[name] = model.grid.to_grid(per_pos).reshape(t, h, w)
        cls_self[name] = float(per_pos[model.grid.cls]) if model.grid.cls is not None else 0.0
    out["tokens"] = {
        "grid_shape": [t, h, w], "clean": _list(maps["clean"]), "corrupt": _list(maps["corrupt"]),
        "difference": _list(maps["clean"] - maps["corrupt"]),
        "per_frame_clean": _list(maps["clean"].sum((1, 2))), "per_frame_corrupt": _list(maps["corrupt"].sum((1, 2))),
        "cls_self_clean": cls_self["clean"], "cls_self_corrupt": cls_self["corrupt"],
        "total_clean": float(maps["clean"].sum()),
    }  # fmt: skip
    return out


def _attention(model, cache_c, cache_r, cls: int, region: Region, top_heads: int) -> dict:
    from vivit_lens.measure import cls_attention, top_heads_by_cls_attention

    cfg = model.cfg
    attn_c, attn_r = cls_attention(cache_c), cls_attention(cache_r)
    dla = cache_c.dla_heads(cls, model=model)[..., 0]  # [layer head]
    order = torch.argsort(dla.abs().reshape(-1), descending=True, stable=True)[: min(top_heads, dla.numel())]
    idx = torch.tensor(region.positions) - model.grid.first
    flat_c = attn_c.values.reshape(cfg.n_layers, cfg.n_heads, -1)
    flat_r = attn_r.values.reshape(cfg.n_layers, cfg.n_heads, -1)
    mass = flat_c[..., idx].sum(-1)
    heads = []
    t, h, w = cfg.grid_shape
    for o in order.tolist():
        l, hd = divmod(o, cfg.n_heads)
        peak = np.unravel_index(int(flat_c[l, hd].argmax()), (t, h, w))
        heads.append({"layer": l, "head": hd, "dla": float(dla[l, hd]), "region_mass": float(mass[l, hd]),
                      "region_mass_corrupt": float(flat_r[l, hd, idx].sum()), "max_weight": float(flat_c[l, hd].max()),
                      "cls_self": float(attn_c.meta["cls_self"][l, hd]),
                      "peak_thw": [int(i) for i in peak],
                      "map_clean": _list(attn_c.values[l, hd]), "map_corrupt": _list(attn_r.values[l, hd])})  # fmt: skip
    by_region = top_heads_by_cls_attention(attn_c, torch.tensor(region.positions), k=min(10, dla.numel()))
    uniform = len(region.positions) / cfg.n_pos
    best = int(mass.reshape(-1).argmax())
    return {"ranking": "|direct logit attribution| of the head on the clean clip", "heads": heads,
            "region_mass": _list(mass), "uniform_mass": uniform, "region_mass_ratio": _list(mass / uniform),
            "best_region_head": {"layer": best // cfg.n_heads, "head": best % cfg.n_heads,
                                 "region_mass": float(mass.reshape(-1)[best]),
                                 "ratio_to_uniform": float(mass.reshape(-1)[best] / uniform)},
            "top_by_region_mass": [{**r, "peak": list(r["peak"])} for r in by_region]}  # fmt: skip


def _ablation(model, clean: Tensor, logits_c: Tensor, region: Region, cls: int, k: int) -> dict:
    from vivit_lens.ablation import Ablation, ablate, mask_pixels, topk_table

    rows = min(k + 1, model.cfg.n_classes)
    with torch.no_grad():
        masked = mask_pixels(clean, frames=range(*region.frames), box=region.box, value=0.0)  # box: x0, y0, x1, y1
        after_pix = model(masked)
    after_tok = ablate(model, clean, Ablation.zero("blocks.0.hook_resid_pre", positions=list(region.positions)))
    out = {}
    for name, after in (("pixels", after_pix), ("tokens", after_tok)):
        table = topk_table(logits_c, after, model.labels, k=rows)
        out[name] = {"table": table.to_records(), "class_logit_before": float(logits_c[0, cls]),
                     "class_logit_after": float(after[0, cls]), "class_change": float(after[0, cls] - logits_c[0, cls]),
                     "top1_after": model.labels.get(int(after[0].argmax()), str(int(after[0].argmax())))}  # fmt: skip
    out["region_fraction_of_tokens"] = len(region.positions) / model.cfg.n_tubelets
    return out


def _block_patching(model, corrupt, cache_c, cache_r, metric, s: int, signal_pos, norm_recovery: bool,
                    opts) -> dict:  # fmt: skip
    from vivit_lens.metrics import SignalRecovery
    from vivit_lens.patching import get_act_patch_attn_out, get_act_patch_mlp_out

    layers = range(s + 1)
    attn = get_act_patch_attn_out(model, corrupt, cache_c, metric, positions="all", layers=layers, **opts)
    mlp = get_act_patch_mlp_out(model, corrupt, cache_c, metric, positions="all", layers=layers, **opts)
    out = {"attention": _list(attn), "mlp": _list(mlp), "signal_norm": float((metric.clean - metric.corrupt).norm())}
    table = [{"layer": l, "attention": float(attn[l]), "mlp": float(mlp[l])} for l in layers]
    if norm_recovery:
        norm = SignalRecovery.from_caches(cache_c, cache_r, metric.hook, signal_pos, kind="norm")
        attn_n = get_act_patch_attn_out(model, corrupt, cache_c, norm, positions="all", layers=layers, **opts)
        mlp_n = get_act_patch_mlp_out(model, corrupt, cache_c, norm, positions="all", layers=layers, **opts)
        out.update(attention_norm=_list(attn_n), mlp_norm=_list(mlp_n))
        for l, row in zip(layers, table):
            row.update(attention_norm=float(attn_n[l]), mlp_norm=float(mlp_n[l]))
    return {**out, "table": table}


def _paths(model, clean, corrupt, metric, res: dict, s: int, n_composers: int, opts) -> dict:
    from vivit_lens.paths import FinalResid, MLPInput, PathPatcher

    cfg = model.cfg
    pp = PathPatcher(model, clean, corrupt, metric, batch_size=opts["batch_size"], progress=opts["progress"])
    out: dict[str, Any] = {"metric": "signal recovery (%)", "freeze": True}
    if s == cfg.n_layers - 1:
        direct = pp.senders_into(FinalResid(positions=metric.positions))
        at_cls = model.grid.cls is not None and metric.positions == (model.grid.cls,)
        where = "[CLS]" if at_cls else "the readout" if metric.positions == tuple(model.readout_positions) else "all tokens"
        out["direct_to_final"] = {"receiver": "final residual at " + where,
                                  "heads": _list(direct.heads()), "mlps": _list(direct.mlps()),
                                  "embed": float(direct.values[0, 0])}  # fmt: skip
    else:
        out["direct_to_final"] = None
        out["direct_note"] = "direct paths need the signal at the last layer (--signal-layer default)"
    mlp = torch.tensor(res["patching"]["mlp"]) if "mlp" in res.get("patching", {}) else None
    if mlp is None:
        raise ValueError("the 'paths' step needs the 'patching' step")
    composers = torch.argsort(mlp, descending=True, stable=True)[: min(n_composers, len(mlp))].tolist()
    out["into_mlps"] = []
    for l in composers:
        into = pp.senders_into(MLPInput(l), senders="heads")
        m = into.heads().double()
        m[l + 1 :] = float("nan")  # a head after MLP l cannot write into its input: unreachable, stored as null
        reach = m[: l + 1].abs().reshape(-1)  # the reachable heads come first in layer-major order
        order = torch.argsort(reach, descending=True, stable=True)[:5].tolist()
        out["into_mlps"].append({
            "mlp_layer": l, "mlp_recovery": float(mlp[l]), "heads": _list(m),
            "top_heads": [{"layer": o // cfg.n_heads, "head": o % cfg.n_heads, "effect": float(m.reshape(-1)[o])}
                          for o in order],
        })  # fmt: skip
    return out


def _attribution(model, clean, corrupt, metric, res: dict, s: int) -> dict:
    from vivit_lens.attribution import agreement, attribution_patch
    from vivit_lens.paths import FinalResid, MLPInput

    attr = attribution_patch(model, clean, corrupt, metric)
    pat = res.get("patching", {})
    out: dict[str, Any] = {}

    def compare(name: str, exact, approx, k: int) -> None:
        exact_t, approx_t = torch.as_tensor(exact, dtype=torch.float64), approx.detach().double()
        out[name] = {"exact": _list(exact_t), "attribution": _list(approx_t),
                     "agreement": jsonable(agreement(exact_t, approx_t, k=k))}  # fmt: skip

    if "attention" in pat:
        compare("attention", pat["attention"], attr.attn_out.sum(-1)[: s + 1], k=3)
        compare("mlp", pat["mlp"], attr.mlp_out.sum(-1)[: s + 1], k=3)
    if "heads" in pat:
        compare("heads", pat["heads"], attr.head_out[: s + 1], k=10)
    paths = res.get("paths") or {}
    if paths.get("direct_to_final"):
        approx = attr.senders_into(FinalResid(positions=metric.positions))
        compare("direct_heads", paths["direct_to_final"]["heads"], approx.heads(), k=10)
    for entry in paths.get("into_mlps", []):  # only the heads that can reach the MLP (layers <= its layer)
        l = entry["mlp_layer"]
        approx = attr.senders_into(MLPInput(l), senders="heads").heads()[: l + 1]
        compare(f"heads_into_mlp{l}", entry["heads"][: l + 1], approx, k=10)
    return out


# Many pairs -------------------------------------------------------------------------------------
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


def _per_pair_vectors(r: dict) -> dict[str, Any]:
    """The per-pair numbers that a study aggregates."""
    c, p = r["delta_cascade"], r["patching"]
    d = r["dla"]["components"]
    return {
        "cascade_token_mean": c["resid_post"]["token_mean"], "cascade_cls": c["resid_post"]["cls"],
        "attention_recovery": p["attention"], "mlp_recovery": p["mlp"], "head_recovery": p["heads"],
        "ablation_pixels_change": r["ablation"]["pixels"]["class_change"],
        "ablation_tokens_change": r["ablation"]["tokens"]["class_change"],
        "class_logit_clean": d["logit_clean"], "class_logit_corrupt": d["logit_corrupt"],
        "class_logit_difference": d["logit_clean"] - d["logit_corrupt"],
        "region_mass_ratio": r["cls_attention"]["region_mass_ratio"],
    }  # fmt: skip


@dataclass(frozen=True)
class StudyPair:
    """The per-pair part of `study`: `analyze_pair` with the study's options, reduced to what is aggregated.

    A picklable function of `(model, pair)`, so that a runner can call it on a model replica elsewhere.
    """

    label: int | str | None
    signal_layer: int | None
    signal_positions: str
    batch_size: int

    def __call__(self, model, pair: PairInput) -> dict:
        r = analyze_pair(model, pair.clean, pair.corrupt, label=self.label, region=pair.region,
                         signal_layer=self.signal_layer, signal_positions=self.signal_positions, steps=STUDY_STEPS,
                         norm_recovery=False, batch_size=self.batch_size, progress=False)  # fmt: skip
        return {"row": _per_pair_vectors(r), "same_top1": r["predictions"]["same_top1"],
                "top1": r["predictions"]["clean"][0]["label"]}  # fmt: skip


def study(
    model,
    pairs: Mapping[str, Sequence[PairInput]],
    *,
    probe_pairs: Mapping[str, Sequence[PairInput]] | None = None,
    label: int | str | None = None,
    signal_layer: int | None = None,
    signal_positions: str = "cls",
    n_boot: int = 2000,
    seed: int = 0,
    k_folds: int = 5,
    progress: bool = True,
    batch_size: int = 16,
    runner=None,
) -> dict:
    """The per-pair measurements of `analyze_pair` over many pairs per domain, as means with 95% bootstrap CIs,
    and per-layer outcome probes on [CLS].

    `pairs`: `{domain: [PairInput, ...]}` (e.g. `generate_pairs(model, "bowling", 20)`), analysed pair by pair.
    `probe_pairs`: the pairs the probes and the hidden-outcome checks use (default: `pairs`); forwards only, so
    they can be many more. The probe is grouped k-fold (`k_folds`) over pairs: every clip is predicted by a
    probe that never saw its pair. With two or more domains, a probe trained on one domain's outcomes is
    tested on another's (`transfer`).
    Returns a JSON-ready dict: `domains[d]` holds `per_pair` rows, the aggregated `ci` of each quantity and the
    `hidden` checks; `probe[d]` the per-layer probe records; `warnings` what makes the CIs unreliable.
    A pair whose analysis fails is listed in `domains[d]["failed"]` with its error (and warned about); the CIs
    are over the others. `runner`: a `vivit_lens.distributed` runner (`RayRunner(model, workers=N)`) that runs
    the pairs and the probe forwards on model replicas; the results are the serial run's, in the same order.
    """
    from vivit_lens.distributed import Failed, SerialRunner
    from vivit_lens.probes import best_record, collect_activations, grouped_cv_probes, transfer_probes

    cfg = model.cfg
    probe_pairs = pairs if probe_pairs is None else probe_pairs
    out: dict[str, Any] = {"domains": {}, "probe": {}, "transfer": {}, "warnings": [],
                           "bootstrap": {"n_boot": n_boot, "seed": seed, "level": 0.95}}  # fmt: skip
    acts_by_domain: dict[str, tuple[Tensor, Tensor, Tensor]] = {}
    for domain, plist in pairs.items():
        if not plist:
            raise PairError(f"domain {domain!r} has no pairs")
    job = StudyPair(label, signal_layer, signal_positions, batch_size)
    flat = [pair for plist in pairs.values() for pair in plist]
    done = iter((runner or SerialRunner(model)).map(job, flat, desc="study", progress=progress,
                                                    postfix=lambda pair: pair.name))  # fmt: skip
    for domain, plist in pairs.items():
        rows, names, same_top1, top1, failed = [], [], [], [], []
        for pair in plist:
            r = next(done)
            if isinstance(r, Failed):
                failed.append({"pair": pair.name, "error": r.error})
                out["warnings"].append(f"{domain}: pair {pair.name} failed and is left out: {r.error}")
                continue
            rows.append(r["row"])
            names.append(pair.name)
            same_top1.append(r["same_top1"])
            top1.append(r["top1"])
        if not rows:
            raise PairError(f"domain {domain!r}: every pair failed; the first: {failed[0]['pair']}: {failed[0]['error']}")
        d: dict[str, Any] = {"pairs": names, "n": len(rows), "same_top1_fraction": float(np.mean(same_top1)),
                             "clean_top1": top1, "layers": list(range(len(rows[0]["attention_recovery"])))}  # fmt: skip
        ci = {}
        for key in rows[0]:
            ci[key] = jsonable(bootstrap_ci([row[key] for row in rows], n_boot=n_boot, seed=seed))
        for key in ("attention_recovery", "mlp_recovery"):
            v = np.asarray([row[key] for row in rows], dtype=float)
            ci[key]["fraction_ge_100"] = _list((v >= 100).mean(0))
        d["ci"] = ci
        d["per_pair"] = [{"pair": n, **row} for n, row in zip(names, rows)]
        d["failed"] = failed
        out["domains"][domain] = d

    for domain, plist in probe_pairs.items():
        if len(plist) < 2:
            out["warnings"].append(f"{domain}: the probe needs at least 2 pairs, got {len(plist)}; no probe")
            continue
        clips = torch.cat([torch.cat([p.clean, p.corrupt]) for p in plist])
        acts, top = collect_activations(model, clips, batch_size=batch_size, progress=progress, return_top1=True,
                                        runner=runner)  # fmt: skip
        labels, groups = torch.tensor([1, 0] * len(plist)), torch.arange(len(plist)).repeat_interleave(2)
        acts_by_domain[domain] = (acts, labels, groups)
        k = min(k_folds, len(plist))
        recs = grouped_cv_probes(acts, labels, groups, k=k, n_boot=n_boot, seed=seed)
        best = best_record(recs)
        out["probe"][domain] = {
            "records": recs, "best_layer": best["layer"], "best": best, "chance": recs[0]["chance"],
            "n_pairs": len(plist), "k": k,
            "split": f"grouped {k}-fold over pairs: both clips of a pair in one fold; every clip predicted once by "
                     f"a probe trained on the other folds",
            "control": "the same probe and folds with the outcome labels permuted within each pair",
        }  # fmt: skip
        action = _domain_label(model, plist)
        same = (top[0::2] == top[1::2]).double().numpy()
        ci = bootstrap_ci(same, n_boot=n_boot, seed=seed)
        hidden = {"n_pairs": len(plist), "same_top1_fraction": float(same.mean()),
                  "same_top1_ci": [float(ci["lo"]), float(ci["hi"])]}  # fmt: skip
        if action is not None:
            hit = (top == action).double().reshape(-1, 2).mean(1).numpy()  # per pair: 0, 0.5 or 1
            ci = bootstrap_ci(hit, n_boot=n_boot, seed=seed)
            hidden |= {"action": cfg.id2label[action], "action_accuracy": float(hit.mean()),
                       "action_accuracy_ci": [float(ci["lo"]), float(ci["hi"])]}  # fmt: skip
        out["domains"].setdefault(domain, {})["hidden"] = hidden
        # The bootstrap over pairs can be narrow by accident (a probe that gives both clips of every pair one
        # label scores exactly 0.5 on each); the binomial bound at 50% for this many clips is the floor.
        half = max((best["test_hi"] - best["test_lo"]) / 2, 1.96 * math.sqrt(0.25 / len(labels)))
        out["probe"][domain]["ci_half_width"] = half
        if half > PROBE_CI_HALF_WIDTH:
            out["warnings"].append(
                f"{domain}: with {len(plist)} pairs the probe's 95% CI is +-{half:.2f} wide (more than "
                f"+-{PROBE_CI_HALF_WIDTH}); its accuracies mean little. Use at least "
                f"{math.ceil(0.25 * (1.96 / PROBE_CI_HALF_WIDTH) ** 2 / 2)} pairs (--probe-pairs)")
    for a, b in ((a, b) for a in acts_by_domain for b in acts_by_domain if a != b):
        (xa, ya, _), (xb, yb, gb) = acts_by_domain[a], acts_by_domain[b]
        out["transfer"][f"{a}->{b}"] = transfer_probes(xa, ya, xb, yb, gb, n_boot=n_boot, seed=seed)
    for w in out["warnings"]:
        logger.warning(w)
    out["signal"] = {"layer": cfg.n_layers - 1 if signal_layer is None else signal_layer, "positions": signal_positions}
    return out


def _domain_label(model, plist: Sequence[PairInput]) -> int | None:
    """The class a domain's clips should get: the generated pairs' action, when the model has that label."""
    action = plist[0].meta.get("action")
    return model.cfg.label2id.get(action) if action else None


# Provenance -------------------------------------------------------------------------------------
def model_findings(model_name: str | Path | None) -> dict | None:
    """What a local checkpoint's `training.json` records of the model's outcome knowledge (`outcome_world`,
    written by `benchmarks/outcome_world.py --record`), or None."""
    if not model_name:
        return None
    path = Path(model_name) / "training.json"
    try:
        return json.loads(path.read_text()).get("outcome_world") if path.is_file() else None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def findings_lines(f: Mapping) -> list[str]:
    """Plain-text sentences for a `model_findings` record (the measured hidden / present / transfer / causal)."""
    lines = []
    for dom, d in f.get("domains", {}).items():
        h, p, c = d["hidden"], d["present"], d["causal"]
        b = p["best"]
        lines.append(f"{dom}: the outcome is hidden from the label (same top-1 on both clips of "
                     f"{h['same_top1_fraction']:.1%} of {h['n_pairs']} pairs, 95% CI [{h['same_top1_ci'][0]:.1%}, "
                     f"{h['same_top1_ci'][1]:.1%}]; top-1 = {h.get('action', '?')} on {h.get('action_accuracy', float('nan')):.1%}) "
                     f"and present in [CLS]: a linear probe reads it at {b['test']:.2f} [{b['test_lo']:.2f}, "
                     f"{b['test_hi']:.2f}] held-out accuracy at layer {p['best_layer']} (grouped {p['k']}-fold over "
                     f"{p['n_pairs']} pairs; shuffled-label control {b['control']:.2f}).")
        att = [v[0] for v in c["attention_recovery_by_layer"]]
        mlp = [v[0] for v in c["mlp_recovery_by_layer"]]
        la, lm = int(np.argmax(att)), int(np.argmax(mlp))
        sh, rg = c["strongest_head"], c["head_most_on_region"]
        lines.append(f"{dom}, causal ({c['n_pairs']} pairs): patching the layer-{la} attention output recovers "
                     f"{att[la]:.0f}% [{c['attention_recovery_by_layer'][la][1]:.0f}, "
                     f"{c['attention_recovery_by_layer'][la][2]:.0f}] of the clean - corrupt signal, the layer-{lm} MLP "
                     f"{mlp[lm]:.0f}% [{c['mlp_recovery_by_layer'][lm][1]:.0f}, {c['mlp_recovery_by_layer'][lm][2]:.0f}]; "
                     f"strongest head L{sh['layer']}H{sh['head']} {sh['recovery'][0]:.0f}% "
                     f"[{sh['recovery'][1]:.0f}, {sh['recovery'][2]:.0f}]; L{rg['layer']}H{rg['head']} puts "
                     f"{rg['mass_over_uniform'][0]:.1f}x the uniform share of its [CLS] attention on the outcome region.")
    for name, t in f.get("transfer", {}).items():
        lines.append(f"transfer {name}: a probe trained on one domain's outcomes scores {t['test']:.2f} "
                     f"[{t['lo']:.2f}, {t['hi']:.2f}] on the other's at layer {t['best_layer']} (chance 0.50).")
    if f.get("command"):
        lines.append(f"measured by: {f['command']}")
    return lines



def provenance(model, model_name: str | None = None, **extra: Any) -> dict:
    """Model, configuration and library versions, for results.json."""
    from importlib import metadata

    import vivit_lens

    versions = {"vivit_lens": vivit_lens.__version__, "python": platform.python_version(), "torch": torch.__version__,
                "numpy": np.__version__}  # fmt: skip
    for pkg in ("transformers", "matplotlib", "av"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    cfg = model.cfg
    findings = model_findings(model_name)
    if findings:
        extra = {"model_findings": findings, **extra}
    return {
        "model": {"name_or_path": model_name, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "d_model": cfg.d_model,
                  "d_mlp": cfg.d_mlp, "num_frames": cfg.num_frames, "image_size": list(cfg.image_size),
                  "tubelet_size": list(cfg.tubelet_size), "grid_shape": list(cfg.grid_shape), "n_pos": cfg.n_pos,
                  "n_classes": cfg.n_classes},
        "versions": versions, "created": time.strftime("%Y-%m-%d %H:%M:%S %z"), **extra,
    }  # fmt: skip


__all__ = [
    "ANALYSIS_TERMS", "DEFINITIONS", "PairError", "PairInput", "RECOVERY_FORMULA", "Region", "STEPS", "analyze_pair", "bootstrap_ci",
    "display_frames", "findings_lines", "generate_pairs", "jsonable", "load_pair", "model_findings", "provenance", "region_from_difference",
    "region_from_spec", "resolve_class", "spec_xyxy", "study", "STUDY_TERMS", "definitions",
]  # fmt: skip
