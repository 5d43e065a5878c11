"""The token grid of a ViViT: token positions <-> (tubelet time, row, column), input frames and pixels.

    grid = model.grid                                              # TokenGrid(model.cfg)
    region = grid.positions(frames=range(8, 12), box=(80, 96, 144, 160))   # tokens to ablate / patch
    heat = grid.to_frames(per_token_scores)                        # [frames, height, width] for overlays

HF ViViT order: position 0 is [CLS], then `pos = 1 + t * (H' * W') + row * W' + col` for the token
grid (T', H', W') = `config.grid_shape` (VideoMAE has no [CLS]: `pos = t * (H' * W') + row * W' + col`). Token (t, row, col) sees input frames `t*tt .. t*tt + tt - 1`
and pixels `x in [col*pw, (col+1)*pw)`, `y in [row*ph, (row+1)*ph)` of the (cropped, resized) model
input, with tubelet (tt, ph, pw) = `config.tubelet_size`. Input frames or pixels beyond the last
whole tubelet are seen by no token (the Conv3d drops the remainder, as in HF).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import einops
import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Int, Shaped

from vivit_lens.models.config import ViViTConfig

Selection = int | range | slice | Iterable[int] | torch.Tensor | None


class TokenGrid:
    """Maps token positions of a ViViT (or VideoMAE: no [CLS], `first = 0`) to the frames and pixels of its
    input, and back."""

    def __init__(self, config: ViViTConfig):
        if not isinstance(config, ViViTConfig):
            raise TypeError(f"TokenGrid needs a vivit_lens ViViTConfig (e.g. model.cfg), got {type(config)}")
        self.config = config
        self.shape: tuple[int, int, int] = config.grid_shape  # (T', H', W')
        self.tubelet: tuple[int, int, int] = config.tubelet_size  # (tt, ph, pw)
        self.num_frames: int = config.num_frames
        self.height, self.width = config.image_size
        self.n_tubelets: int = config.n_tubelets
        self.n_tokens: int = config.n_pos  # tubelets + [CLS] if the model has one
        self.first: int = config.n_pos - config.n_tubelets  # position of tubelet (0, 0, 0): 1 after [CLS], or 0
        self.cls: int | None = 0 if self.first else None

    def __repr__(self) -> str:
        t, h, w = self.shape
        return (f"TokenGrid({t}x{h}x{w} tubelets of {self.tubelet} over {self.num_frames} frames of "
                f"{self.height}x{self.width}; {self.n_tokens} tokens" + (" with [CLS] at 0)" if self.first else ")"))

    # Single tokens -------------------------------------------------------------------------------
    def pos_to_thw(self, pos: int | np.integer | torch.Tensor) -> tuple:
        """(t, row, col) of a tubelet token (ints, or LongTensors for a tensor of positions)."""
        p = self._check_pos(pos) - self.first
        _, h, w = self.shape
        return p // (h * w), (p // w) % h, p % w

    def thw_to_pos(self, t: int | torch.Tensor, row: int | torch.Tensor, col: int | torch.Tensor) -> int | torch.Tensor:
        """Token position of tubelet (t, row, col)."""
        for name, value, size in (("t", t, self.shape[0]), ("row", row, self.shape[1]), ("col", col, self.shape[2])):
            low, high = (int(value.min()), int(value.max())) if isinstance(value, torch.Tensor) else (value, value)
            if low < 0 or high >= size:
                raise ValueError(f"{name} must be in [0, {size}), got {value}")
        _, h, w = self.shape
        return self.first + t * (h * w) + row * w + col

    def frames_of(self, pos: int | np.integer) -> range:
        """Input frame indices the token sees."""
        t, _, _ = self.pos_to_thw(int(self._check_pos(pos)))
        return range(t * self.tubelet[0], (t + 1) * self.tubelet[0])

    def box_of(self, pos: int | np.integer) -> tuple[int, int, int, int]:
        """Pixel box (x0, y0, x1, y1) of the model input the token sees, ends exclusive."""
        _, row, col = self.pos_to_thw(int(self._check_pos(pos)))
        _, ph, pw = self.tubelet
        return col * pw, row * ph, (col + 1) * pw, (row + 1) * ph

    def _check_pos(self, pos: int | np.integer | torch.Tensor) -> int | torch.Tensor:
        if isinstance(pos, torch.Tensor):
            if pos.is_floating_point() or pos.dtype == torch.bool:
                raise ValueError(f"positions must be integers, got dtype {pos.dtype}")
            bad = pos[(pos < self.first) | (pos >= self.n_tokens)]
        elif isinstance(pos, (int, np.integer)) and not isinstance(pos, bool):
            pos = int(pos)
            bad = [pos] if not self.first <= pos < self.n_tokens else []
        else:
            raise ValueError(f"a position must be an int or an integer tensor, got {pos!r}")
        if len(bad):
            cls = " (0 is [CLS], which has no frames or pixels)" if self.first else ""
            raise ValueError(f"positions must be tubelet tokens in [{self.first}, {self.n_tokens}){cls}, "
                             f"got {bad.tolist() if isinstance(bad, torch.Tensor) else bad}")
        return pos

    # Regions -------------------------------------------------------------------------------------
    def positions(self, frames: Selection = None, rows: Selection = None, cols: Selection = None,
                  box: Sequence[int] | None = None, include_cls: bool = False) -> Int[torch.Tensor, "n"]:
        """Sorted positions of the tokens touching a region: all of `frames` (input frame indices),
        `rows` / `cols` (token-grid rows / columns) and `box` (input pixels (x0, y0, x1, y1), ends
        exclusive) that are given; [CLS] (0) first when `include_cls`."""
        t_size, h_size, w_size = self.shape
        tt, ph, pw = self.tubelet
        ts = np.arange(t_size) if frames is None else np.unique(_selection(frames, self.num_frames, "frames") // tt)
        rs = np.arange(h_size) if rows is None else _selection(rows, h_size, "rows")
        cs = np.arange(w_size) if cols is None else _selection(cols, w_size, "cols")
        if box is not None:
            x0, y0, x1, y1 = self._check_box(box)
            rs = rs[(rs >= y0 // ph) & (rs < -(-y1 // ph))]
            cs = cs[(cs >= x0 // pw) & (cs < -(-x1 // pw))]
        ts = ts[ts < t_size]  # frames past the last whole tubelet belong to no token
        t, r, c = np.meshgrid(np.unique(ts), np.unique(rs), np.unique(cs), indexing="ij")
        pos = (self.first + t * (h_size * w_size) + r * w_size + c).ravel()
        if include_cls and self.cls is None:
            raise ValueError("include_cls: this model has no [CLS] token")
        if include_cls:
            pos = np.concatenate([[self.cls], pos])
        return torch.as_tensor(pos, dtype=torch.long)

    def _check_box(self, box: Sequence[int]) -> tuple[int, int, int, int]:
        if len(box) != 4 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in box):
            raise ValueError(f"box must be four ints (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (int(v) for v in box)
        if not (0 <= x0 < x1 <= self.width and 0 <= y0 < y1 <= self.height):
            raise ValueError(f"box (x0, y0, x1, y1) must satisfy 0 <= x0 < x1 <= {self.width} and "
                             f"0 <= y0 < y1 <= {self.height} (input pixels, ends exclusive), got {box!r}")
        return x0, y0, x1, y1

    # Per-token values ----------------------------------------------------------------------------
    def to_grid(self, values: Shaped[torch.Tensor, "*batch n"]) -> Shaped[torch.Tensor, "*batch t h w"]:
        """Values per token ([..., n_tokens] with [CLS] first, dropped; or [..., n_tubelets]) as
        [..., T', H', W']."""
        values = torch.as_tensor(values)
        n = values.shape[-1] if values.ndim else 0
        if n not in (self.n_tokens, self.n_tubelets):
            raise ValueError(f"expected values [..., {self.n_tokens}] (with [CLS]) or [..., {self.n_tubelets}] "
                             f"(tubelets only), got shape {tuple(values.shape)}")
        if n == self.n_tokens:
            values = values[..., self.first:]
        t, h, w = self.shape
        return einops.rearrange(values, "... (t h w) -> ... t h w", t=t, h=h, w=w)

    def per_frame(self, values: Shaped[torch.Tensor, "*batch n"]) -> Shaped[torch.Tensor, "*batch t"]:
        """Sum over the spatial tokens of each tubelet time: [..., T']."""
        return self.to_grid(values).sum(dim=(-2, -1))

    def to_frames(self, values: Shaped[torch.Tensor, "*batch n"],
                  fill: float = 0.0) -> Shaped[torch.Tensor, "*batch frames height width"]:
        """Per-token values painted over the pixels each token sees: [..., num_frames, height, width]
        at the model's input resolution; pixels no token sees (a remainder) get `fill`."""
        tt, ph, pw = self.tubelet
        painted = einops.repeat(self.to_grid(values), "... t h w -> ... (t tt) (h ph) (w pw)", tt=tt, ph=ph, pw=pw)
        f, h, w = painted.shape[-3:]
        pad = (0, self.width - w, 0, self.height - h, 0, self.num_frames - f)
        return F.pad(painted, pad, value=fill) if any(pad) else painted


def _selection(sel: Selection, size: int, name: str) -> np.ndarray:
    """Indices in [0, size) from an int, range, slice, tensor or iterable of ints."""
    if isinstance(sel, slice):
        return np.arange(size)[sel]
    if isinstance(sel, torch.Tensor):
        sel = sel.tolist()
    items = [sel] if isinstance(sel, (int, np.integer)) else list(sel)
    if not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in items):
        raise ValueError(f"{name} must be ints, a range, a slice or an integer tensor, got {sel!r}")
    arr = np.asarray(items, dtype=np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= size):
        raise ValueError(f"{name} must be in [0, {size}), got {sorted(set(arr.tolist()))}")
    return arr
