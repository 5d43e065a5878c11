"""Minimal pairs as model inputs: loaded from two videos or rendered, checked, preprocessed, with the outcome region.

    pair = load_pair(model, "strike.mp4", "gutter.mp4")     # PairInput: pixels of both clips + Region (spec.json)
    pairs = generate_pairs(model, "bowling", 20)             # rendered by vivit_lens.synthetic
    region = region_from_difference(model, clean, corrupt)  # the tokens whose embeddings differ most
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

# The logger keeps the name of the module these functions came from (vivit_lens.analysis)
logger = logging.getLogger("vivit_lens.analysis")


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
    from vivit_lens.io.video import resize_output_size

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
    from vivit_lens.io import video

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
    from vivit_lens import synthetic
    from vivit_lens.io import video

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
