"""Procedurally rendered action clips and outcome minimal pairs, for training and probing small ViViTs.

Eight scenes (`ACTIONS`), each ending in one of two outcomes. Six are *actions*, labelled by the
action alone: a bowling strike and a gutter ball are both `bowling`, a holed and a missed putt both
`golf_putt`. Two are *events*, labelled by their outcome (`EVENT_SCENES`): `skittles` (the same pins as
bowling, on a bare floor, knocked over by a sliding block or left standing as it slides past) and `marble` (a ball
rolling into a hole, or past it, on a bare table, with no club). A classifier must learn to see pins
fall and balls drop to tell the event classes apart, and those detectors then also fire inside
bowling and golf clips, whose labels never carry the outcome (as a Kinetics model's event features
fire on clips of other classes). `LABELS` are the classes; `label_of(action, outcome)` maps a clip to
its class. For one seed the two outcomes share every random draw (scene, colours, pixel noise, camera
jitter), so a pair is bit-identical before its `decisive_frame` and differs afterwards only inside
`box`, where the outcome happens.

    clip, spec = render("bowling", seed=3, outcome="strike", frames=16, size=64)  # uint8 [16, 64, 64, 3]
    clean, corrupt, pair = render_pair("golf_putt", seed=3)       # holed vs missed, same seed
    x, y = dataset(n=512, seed=0)                                  # balanced labels, random outcomes

Drawing is pure numpy: every object is a `_Sprite`, a primitive shape whose geometry is an array
per frame, drawn for all frames at once as soft-edged (anti-aliased) masks.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from jaxtyping import Int64, UInt8

Clip = UInt8[np.ndarray, "frames height width 3"]

ACTIONS: tuple[str, ...] = ("bowling", "golf_putt", "juggling", "swinging", "sliding", "rolling", "skittles", "marble")
# First outcome = "success" = the clean run of `render_pair`; second = "failure" = the corrupt run.
OUTCOMES: dict[str, tuple[str, str]] = {
    "bowling": ("strike", "gutter"),
    "golf_putt": ("holed", "missed"),
    "juggling": ("caught", "dropped"),
    "swinging": ("intact", "snapped"),
    "sliding": ("stops", "falls"),
    "rolling": ("over", "blocked"),
    "skittles": ("toppled", "standing"),
    "marble": ("sunk", "passed"),
}
# Scenes whose class is their outcome; every other scene's class is the scene alone, whatever happens.
EVENT_SCENES: tuple[str, ...] = ("skittles", "marble")
LABELS: tuple[str, ...] = tuple(a for a in ACTIONS if a not in EVENT_SCENES) + tuple(
    f"{a}_{o}" for a in EVENT_SCENES for o in OUTCOMES[a])
MIN_FRAMES, MIN_SIZE = 4, 32
# The event scenes show their pins and balls at 1x to EVENT_ZOOM[1]x the size bowling and golf_putt use: large
# ones make the outcome easy to find early in training, the 1x ones make the detector work at bowling's size.
EVENT_ZOOM = (1.0, 2.0)
# `event_setting` (render / dataset): the share of event clips set where the actions are (skittles on a bowling
# lane, a marble on a striped green, with no club), so that what detects the event there is what sees it in a
# bowling or golf clip; with event_setting > 0, half of all event clips are also drawn at exactly the actions'
# size, and a marble rolls slowly enough to be still on its way down halfway through the time left. 0 (the
# default) is the world of bare floors and tables at 1-2x, byte for byte, the one of the shipped model's stages 1,
# 2 and 4. Skittles on a lane have no gutters and are pushed by a plank, so that they can be told from bowling.
# Measured (benchmarks/RESULTS.md): its third stage, at 0.5, raised the bowling probe but made strikes look like
# toppled skittles to the classifier; the fourth, back at 0, took that confusion away and kept the probe.
# `putt_marbles` (render / dataset): the share of marble clips drawn as a putt without its club (golf_putt's green,
# sizes, path and speeds, draw for draw). 0 (the default) draws none. Measured (benchmarks/RESULTS.md): a fifth
# stage with 0.5 did not teach the model a putt's outcome; it is kept as an option, and is in no shipped stage.
# Where in the clip (fraction of its length) the outcome is decided: early enough that the outcome stays on screen
# for most of the clip (with the outcome decided at 40-60%, a small ViViT did not learn to see it in our budget).
DECISIVE = (0.25, 0.4)


def _event_zoom(rng: np.random.Generator, event_setting: float) -> float:
    if event_setting and rng.uniform() < 0.5:
        return 1.0
    return float(rng.uniform(*EVENT_ZOOM))


def _in_setting(rng: np.random.Generator, event_setting: float) -> bool:
    return bool(event_setting) and rng.uniform() < event_setting


def label_of(action: str, outcome: str) -> int:
    """The class of a clip: `LABELS.index(action)` for an action scene (the outcome is ignored, by design),
    `LABELS.index(f"{action}_{outcome}")` for an event scene."""
    if action not in OUTCOMES:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    if outcome not in OUTCOMES[action]:
        raise ValueError(f"unknown outcome {outcome!r} for {action!r}; expected one of {OUTCOMES[action]}")
    return LABELS.index(f"{action}_{outcome}" if action in EVENT_SCENES else action)


@dataclass(frozen=True)
class ClipSpec:
    """What one clip shows. `box` = (top, left, bottom, right) in pixels, bottom/right exclusive:
    every pixel where this seed's two outcomes differ lies inside it (camera jitter included)."""

    action: str
    label: int
    outcome: str
    seed: int
    frames: int
    height: int
    width: int
    decisive_frame: int  # first frame at which the two outcomes of this seed differ
    box: tuple[int, int, int, int]


@dataclass(frozen=True)
class PairSpec:
    """A minimal pair: `clean` (success) and `corrupt` (failure) outcomes of one seed. `label` is the clean
    clip's class, `corrupt_label` the corrupt clip's: equal for an action, different for an event scene."""

    action: str
    label: int
    clean_outcome: str
    corrupt_outcome: str
    seed: int
    frames: int
    height: int
    width: int
    decisive_frame: int
    box: tuple[int, int, int, int]
    corrupt_label: int


# ---------------------------------------------------------------------------------------------
# Sprites: a shape kind, a colour, geometry params [k, n] and an opacity [n] over n frames.
_ARITY = {"disc": 3, "ring": 4, "rect": 4, "capsule": 5}  # (y x r) (y x r thick) (y x hh hw) (y0 x0 y1 x1 hw)


@dataclass
class _Sprite:
    kind: str
    color: np.ndarray
    params: np.ndarray
    alpha: np.ndarray

    def extent(self, frames: np.ndarray) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) covered in the given frames, 1 px of soft edge included."""
        p = self.params[:, frames]
        if self.kind in ("disc", "ring"):
            r = p[2] + (p[3] / 2 if self.kind == "ring" else 0)
            ys, xs, hy, hx = p[0], p[1], r, r
        elif self.kind == "rect":
            ys, xs, hy, hx = p[0], p[1], p[2], p[3]
        else:
            ys, xs, hy, hx = np.concatenate([p[0], p[2]]), np.concatenate([p[1], p[3]]), *[np.tile(p[4], 2)] * 2
        return (ys - hy).min() - 1, (xs - hx).min() - 1, (ys + hy).max() + 1, (xs + hx).max() + 1


def _spr(kind: str, color: np.ndarray, *params, alpha=1.0, n: int = 1) -> _Sprite:
    assert len(params) == _ARITY[kind], kind
    rows = [np.broadcast_to(np.asarray(p, np.float64), (n,)) for p in (*params, alpha)]
    return _Sprite(kind, np.asarray(color, np.float32), np.stack(rows[:-1]), np.array(rows[-1]))


def _mask(kind: str, p: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Coverage in [0, 1] of shapes p [k, n] on the grid: [n, H, W], soft over one pixel."""
    p = p.astype(np.float32)[:, :, None, None]
    if kind == "rect":
        return np.clip(p[2] - np.abs(yy - p[0]) + 0.5, 0, 1) * np.clip(p[3] - np.abs(xx - p[1]) + 0.5, 0, 1)
    if kind == "capsule":
        dy, dx = p[2] - p[0], p[3] - p[1]
        t = np.clip(((yy - p[0]) * dy + (xx - p[1]) * dx) / (dy * dy + dx * dx + 1e-6), 0, 1)
        dist = np.sqrt((yy - p[0] - t * dy) ** 2 + (xx - p[1] - t * dx) ** 2)
        return np.clip(p[4] - dist + 0.5, 0, 1)
    dist = np.sqrt((yy - p[0]) ** 2 + (xx - p[1]) ** 2)
    if kind == "ring":
        return np.clip(p[3] / 2 - np.abs(dist - p[2]) + 0.5, 0, 1)
    return np.clip(p[2] - dist + 0.5, 0, 1)


def _paint(canvas: np.ndarray, sprites: Sequence[_Sprite], yy: np.ndarray, xx: np.ndarray) -> None:
    """Alpha-blend sprites, in order, into canvas [n, H, W, 3] in place. Only the frames where a
    sprite is visible and the window it sweeps are touched (pixels outside have coverage 0)."""
    for s in sprites:
        on = np.flatnonzero(s.alpha > 0)
        if not on.size:
            continue
        top, left, bot, right = s.extent(on)
        ys = slice(*np.searchsorted(yy.ravel(), [math.floor(top), math.ceil(bot) + 1]))
        xs = slice(*np.searchsorted(xx.ravel(), [math.floor(left), math.ceil(right) + 1]))
        if ys.start == ys.stop or xs.start == xs.stop:
            continue
        frames = slice(None) if on.size == len(s.alpha) else on
        m = _mask(s.kind, s.params[:, on], yy[:, ys], xx[:, :, xs]) * s.alpha[on, None, None].astype(np.float32)
        window = canvas[frames, ys, xs]
        canvas[frames, ys, xs] = window + m[..., None] * (s.color - window)


# ---------------------------------------------------------------------------------------------
# Colours and textures.
def _lum(c: np.ndarray) -> float:
    return float(c @ np.array([0.299, 0.587, 0.114]))


def _color(rng: np.random.Generator) -> np.ndarray:
    """A random colour: any hue, so no class is recognisable by colour alone."""
    h, s, v = rng.uniform(0, 1), rng.uniform(0.15, 0.85), rng.uniform(0.2, 0.95)
    rgb = np.clip(np.abs((h * 6 + np.array([0.0, 4.0, 2.0])) % 6 - 3) - 1, 0, 1)
    return v * (1 - s + s * rgb)


def _contrast(rng: np.random.Generator, ref: np.ndarray, diff: float) -> np.ndarray:
    """A random colour whose luminance differs from `ref` by at least `diff` (blended to black/white)."""
    c, lr = _color(rng), _lum(ref)
    lc = _lum(c)
    if abs(lc - lr) < diff:
        target = 0.0 if lr - diff >= 0.02 and (lr > 0.5 or lr + diff > 0.98) else 1.0
        need = lr - diff if target == 0.0 else lr + diff
        a = np.clip((need - lc) / (target - lc), 0, 1)
        c = c * (1 - a) + target * a
    return c


def _distinct(rng: np.random.Generator, refs: Sequence[np.ndarray], diff: float) -> np.ndarray:
    """A colour at RGB distance >= `diff` from every colour in `refs` (best of 16 tries)."""
    best, score = None, -1.0
    for _ in range(16):
        c = _contrast(rng, refs[0], diff / 2)
        d = min(float(np.linalg.norm(c - r)) for r in refs)
        if d > score:
            best, score = c, d
        if d >= diff:
            break
    return best


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int = 4) -> np.ndarray:
    """Low-frequency noise [h, w] in [-1, 1]: a random (cells+1)^2 grid, bilinearly upsampled."""
    g = rng.uniform(-1, 1, (cells + 1, cells + 1))
    fy, fx = np.linspace(0, cells, h), np.linspace(0, cells, w)
    iy, ix = np.minimum(fy.astype(int), cells - 1), np.minimum(fx.astype(int), cells - 1)
    ty, tx = (fy - iy)[:, None], (fx - ix)[None, :]
    top = g[iy][:, ix] * (1 - tx) + g[iy][:, ix + 1] * tx
    bot = g[iy + 1][:, ix] * (1 - tx) + g[iy + 1][:, ix + 1] * tx
    return top * (1 - ty) + bot * ty


# ---------------------------------------------------------------------------------------------
# Scenes. Each draws all its random parameters up front (never depending on the outcome), then
# `build(outcome)` returns the moving sprites: identical arrays before the decisive frame.
class _Time(NamedTuple):
    n: int  # frames
    h: int
    w: int
    d: int  # decisive frame; the branch happens at frame d - 1, so frame d is the first to differ
    u: np.ndarray  # [n] clip time in [0, 1]
    ub: float  # branch time

    @property
    def s(self) -> float:
        return float(min(self.h, self.w))

    @property
    def wpost(self) -> np.ndarray:
        """Time since the branch, 0 up to frame d - 1 (post-branch formulas are used only from d)."""
        return np.maximum(self.u - self.ub, 0.0)

    def branch(self, before: float | np.ndarray, after: float | np.ndarray) -> np.ndarray:
        return np.where(np.arange(self.n) >= self.d, after, before)


class _Scene(NamedTuple):
    background: np.ndarray  # colour (3,)
    layout: list[_Sprite]  # static, n = 1
    build: Callable[[str], list[_Sprite]]


def _ease(z: np.ndarray, end_speed: float) -> np.ndarray:
    """Decelerating progress 0 -> 1 over z in [0, 1], speed 2 - end_speed at 0 and end_speed at 1."""
    return z * ((2 - end_speed) - (1 - end_speed) * z)


def _bowling(rng: np.random.Generator, t: _Time, lane: bool = True, event_setting: float = 0.0) -> _Scene:
    """Bowling (`lane`), or skittles: the same pins on a bare floor (or a lane) and a sliding block instead of a
    ball, which knocks them over exactly as a strike does, or veers off and slides past as a gutter ball does."""
    h, w, s, n = t.h, t.w, t.s, t.n
    zoom = 1.0 if lane else _event_zoom(rng, event_setting)
    on_lane = lane or _in_setting(rng, event_setting)
    bg = _color(rng)
    lane_c, pit_c = _contrast(rng, bg, 0.2), _contrast(rng, bg, 0.3)
    gut_c, pin_c = _contrast(rng, lane_c, 0.2), _contrast(rng, lane_c, 0.45)
    ball_c = _distinct(rng, [lane_c, gut_c, pin_c], 0.45)
    # Pins large enough that a 64x64 clip shows them falling over a few 8x8 tokens, not within one.
    r_ball, r_pin = zoom * s * rng.uniform(0.045, 0.06), zoom * s * rng.uniform(0.03, 0.036)
    gut_hw, lane_hw = r_ball * rng.uniform(1.0, 1.2), min(zoom, 1.5) * s * rng.uniform(0.17, 0.2)
    cx, top, bot = w / 2 + w * rng.uniform(-0.06, 0.06), h * rng.uniform(0.06, 0.1), h * rng.uniform(0.94, 0.98)
    rows = 3 if s < 96 else 4
    gap = min(r_pin * rng.uniform(2.6, 3.2), 2 * (lane_hw - r_pin - 1) / (rows - 1))
    head_y = top + r_pin + h * rng.uniform(0.04, 0.07) + (rows - 1) * gap * 0.87
    pins = np.array([(head_y - k * gap * 0.87, cx + (j - k / 2) * gap) for k in range(rows) for j in range(k + 1)])
    y0, x0 = bot - r_ball - h * rng.uniform(0, 0.03), cx + lane_hw * rng.uniform(-0.4, 0.4)
    aim = cx + gap * rng.uniform(-0.25, 0.25)
    y_b = head_y + r_pin + r_ball * rng.uniform(3.0, 4.5)
    side = rng.choice((-1.0, 1.0))
    spin = rng.uniform(-0.7, 0.7, len(pins))
    fly, fade = rng.uniform(0.2, 0.5, len(pins)), rng.uniform(0.12, 0.25)

    if on_lane:  # skittles on a lane (event_setting): bowling's lane, pit and foul line, but no gutters
        layout = [_spr("rect", gut_c, (top + bot) / 2, cx, (bot - top) / 2, lane_hw + 2 * gut_hw)] if lane else []
        layout += [_spr("rect", lane_c, (top + bot) / 2, cx, (bot - top) / 2, lane_hw),
                  _spr("rect", pit_c, top / 2, cx, top / 2, lane_hw + 2 * gut_hw),
                  _spr("rect", pit_c, bot - h * 0.12, cx, max(0.4, s * 0.006), lane_hw)]  # foul line
    else:  # a floor from wall to wall, a skirting board at the back
        layout = [_spr("rect", lane_c, (top + h) / 2, w / 2, (h - top) / 2 + 1, w / 2 + 1),
                  _spr("rect", pit_c, top, w / 2, max(0.6, s * 0.012), w / 2 + 1)]

    v = (y0 - y_b) / t.ub  # px per unit clip time, straight toward the aim point
    y_line = y0 - v * t.u
    x_line = x0 + (aim - x0) * (y0 - y_line) / (y0 - head_y)
    x_b = x0 + (aim - x0) * (y0 - y_b) / (y0 - head_y)
    wp = t.wpost
    t_hit = (y_b - head_y - r_pin - r_ball) / v  # strike: time from the branch to the head pin
    wpin = np.maximum(wp - t_hit, 0.0)
    wide = cx + np.array([-1, 1]) * (lane_hw + gut_hw)

    def build(outcome: str) -> list[_Sprite]:
        if outcome in ("strike", "toppled"):
            by, bx = y_b - v * (np.minimum(wp, t_hit) + 0.7 * wpin), x_line  # slowed by the pins
            ang = np.arctan2(pins[:, 1] - aim, pins[:, 0] - head_y - r_ball)[:, None] + spin[:, None]
            dist = v * fly[:, None] * wpin
            py, px = pins[:, :1] + np.cos(ang) * dist, np.clip(pins[:, 1:] + np.sin(ang) * dist, *wide)
            lie = np.minimum(wpin / 0.04, 1) * 2.4 * r_pin
            ey, ex = py + np.cos(ang) * lie, px + np.sin(ang) * lie
            pa = np.clip(1 - wpin / fade, 0, 1) * (np.minimum(py, ey) > top)
        else:
            x_g = cx + side * (lane_hw + gut_hw)  # into the gutter; for skittles, wide past the pins
            vx = abs(x_g - x_b) / (0.85 * t_hit)
            by, bx = y_b - 0.9 * v * wp, x_b + side * np.minimum(vx * wp, abs(x_g - x_b))
            py, px = np.repeat(pins[:, :1], n, 1), np.repeat(pins[:, 1:], n, 1)
            ey, ex, pa = py, px, np.ones((len(pins), n))
        by, bx = np.maximum(t.branch(y_line, by), top - 1), t.branch(x_line, bx)
        ball_alpha = np.clip((by - top) / r_ball, 0, 1)  # fades into the pit
        sprites = [_spr("capsule", pin_c, t.branch(pins[i, 0], py[i]), t.branch(pins[i, 1], px[i]),
                        t.branch(pins[i, 0], ey[i]), t.branch(pins[i, 1], ex[i]), r_pin,
                        alpha=t.branch(1.0, pa[i]), n=n) for i in range(len(pins))]
        if lane:
            hitter = _spr("disc", ball_c, by, bx, r_ball, alpha=ball_alpha, n=n)
        elif on_lane:  # on a lane, a plank several tokens wide: what tells skittles from bowling there
            hitter = _spr("rect", ball_c, by, bx, 0.6 * r_ball, 2.4 * r_ball, alpha=ball_alpha, n=n)
        else:
            hitter = _spr("rect", ball_c, by, bx, 0.9 * r_ball, 1.3 * r_ball, alpha=ball_alpha, n=n)
        return sprites + [hitter]

    return _Scene(bg, layout, build)


def _golf_putt(rng: np.random.Generator, t: _Time, club: bool = True, event_setting: float = 0.0,
               putt_marbles: float = 0.0) -> _Scene:
    """A putt on a striped green (`club`), or a marble: the same ball and hole on a bare framed table (or a
    green), the ball rolling off by itself, with no club, into the hole or just past it. A marble drawn as a
    putt (`putt_marbles`) is a putt without its club: the green, sizes, distances and speeds of golf_putt."""
    h, w, s, n = t.h, t.w, t.s, t.n
    as_putt = not club and bool(putt_marbles) and rng.uniform() < putt_marbles
    zoom = 1.0 if club or as_putt else _event_zoom(rng, event_setting)
    on_green = club or as_putt or _in_setting(rng, event_setting)
    green = _color(rng)
    hole_c, club_c = _contrast(rng, green, 0.35), _contrast(rng, green, 0.3)
    rim_c, ball_c = _contrast(rng, hole_c, 0.25), _distinct(rng, [green, hole_c], 0.45)
    r_ball = zoom * s * rng.uniform(0.045, 0.055)
    r_hole = r_ball * rng.uniform(1.5, 1.8)
    yh, xh = h * rng.uniform(0.35, 0.65), w * rng.uniform(0.62, 0.7)
    back, follow = r_ball * rng.uniform(1.5, 3), r_ball * rng.uniform(1, 2.5)
    y0 = max(yh + h * rng.uniform(-0.15, 0.15), 0.3 * h)  # room above for the club's shaft
    x0 = max(w * rng.uniform(0.18, 0.24), back + 2.5 * r_ball + 0.06 * s + 2)
    u_hit = min(rng.uniform(0.15, 0.25), t.ub / 2)
    stripe_w, stripe_a, vertical = s * rng.uniform(0.1, 0.2), rng.uniform(0.03, 0.08), rng.uniform() < 0.5
    near = r_hole + r_ball * rng.uniform(2.5, 3.5)  # distance to the hole at the branch
    if not club and not as_putt:
        # No backswing to leave room for, and a shorter approach, so that a zoomed-in marble still rolls a good
        # way toward the hole before the branch. (With the putt's spacing, a 2x marble started beside the hole,
        # or even beyond the branch point, and rolled *away* from it before the branch.)
        x0 = max(w * rng.uniform(0.06, 0.14), r_ball + 2)
        near = r_hole + r_ball * rng.uniform(1.2, 1.8)
    turn = math.asin((r_hole + r_ball * rng.uniform(0.4, 0.8)) / near)  # missed: passes just beside the hole
    side, t_stop = rng.choice((-1.0, 1.0)), rng.uniform(0.85, 1.0) * (1 - t.ub)

    stripes = [_spr("rect", green * (1 + stripe_a), *((h / 2, c, h, stripe_w / 2) if vertical else
                                                      (c, w / 2, stripe_w / 2, w)))
               for c in np.arange(0, max(h, w) + stripe_w, 2 * stripe_w)]
    hole = [_spr("ring", rim_c, yh, xh, r_hole, max(0.8, r_hole * 0.3)), _spr("disc", hole_c, yh, xh, r_hole)]
    edge = max(1.0, s * 0.03)  # the marble table's frame
    frame = [_spr("rect", club_c, e_y, w / 2, edge, w / 2 + 1) for e_y in (0, h)] + [
        _spr("rect", club_c, h / 2, e_x, h / 2 + 1, edge) for e_x in (0, w)]
    layout = stripes + hole if on_green else frame + hole

    e = np.array([yh - y0, xh - x0])
    length = float(np.hypot(*e))
    e /= length
    l_b = length - near
    v_b = 0.9 * l_b / (t.ub - u_hit)  # the speed the ball arrives with at the branch
    v_b = max(v_b, 1.4 * near / (1 - t.ub))  # after it: fast enough that a holed ball is gone well before the end
    # and a marble in the actions' setting slow enough to be still on its way down at half the time left
    if not club and event_setting and not as_putt:
        v_b = min(v_b, 2 * near / (1 - t.ub))
    pre = l_b * _ease(np.clip((t.u - u_hit) / (t.ub - u_hit), 0, None), 0.9)
    wp = t.wpost
    c, sn = math.cos(side * turn), math.sin(side * turn)
    e_miss = np.array([c * e[0] - sn * e[1], sn * e[0] + c * e[1]])
    hw_club = 0.45 * r_ball
    club_pos = -(r_ball + hw_club) - np.where(t.u < u_hit, back * (1 - t.u / u_hit), -follow * np.minimum(
        (t.u - u_hit) / 0.05, 1))

    def build(outcome: str) -> list[_Sprite]:
        if outcome in ("holed", "sunk"):
            dist = np.minimum(l_b + v_b * wp, length)
            depth = np.clip(1 - (length - dist) / r_hole, 0, 1)
            by, bx, r, a = y0 + e[0] * dist, x0 + e[1] * dist, r_ball * (1 - 0.4 * depth), 1 - depth
        else:
            m = np.minimum(wp, t_stop)
            dist = v_b * m - 0.5 * (v_b / t_stop) * m * m
            by = np.clip(y0 + e[0] * l_b + e_miss[0] * dist, r_ball + 2, h - r_ball - 2)
            bx = np.clip(x0 + e[1] * l_b + e_miss[1] * dist, r_ball + 2, w - r_ball - 2)
            r, a = r_ball, 1.0
        by, bx = t.branch(y0 + e[0] * pre, by), t.branch(x0 + e[1] * pre, bx)
        ball = _spr("disc", ball_c, by, bx, t.branch(r_ball, r), alpha=t.branch(1.0, a), n=n)
        if not club:
            return [ball]
        cy, cx = y0 + e[0] * club_pos, x0 + e[1] * club_pos
        return [_spr("capsule", club_c, cy, cx, cy - 0.2 * s, cx - 0.06 * s, max(0.5, 0.012 * s), n=n),
                _spr("rect", club_c, cy, cx, 2 * r_ball, hw_club, n=n), ball]

    return _Scene(green, layout, build)


def _juggling(rng: np.random.Generator, t: _Time) -> _Scene:
    h, w, s, n = t.h, t.w, t.s, t.n
    bg = _color(rng)
    floor_c, body_c, skin_c = _contrast(rng, bg, 0.2), _contrast(rng, bg, 0.25), _contrast(rng, bg, 0.3)
    ball_cs = [_contrast(rng, bg, 0.35) for _ in range(3)]
    cx, y_floor = w / 2 + w * rng.uniform(-0.06, 0.06), h * rng.uniform(0.88, 0.94)
    y_hand, half = h * rng.uniform(0.6, 0.68), s * rng.uniform(0.15, 0.2)
    r = s * rng.uniform(0.035, 0.045)
    apex, low = h * rng.uniform(0.3, 0.42), h * rng.uniform(0.03, 0.06)
    cycle = rng.uniform(0.4, 0.6)  # clip time for one ball's high throw plus low pass
    roll = rng.uniform(0.3, 0.8)

    xl, xr, hh, hw = cx - half, cx + half, 0.022 * s, 0.045 * s
    y_c = y_hand - hh - 0.7 * r  # where a ball rests in a hand
    y_sh = y_hand - 0.12 * h
    layout = [_spr("rect", floor_c, (y_floor + h) / 2 + 1, w / 2, (h - y_floor) / 2 + 1, w),
              _spr("rect", body_c, (y_sh + y_floor) / 2, cx, (y_floor - y_sh) / 2, 0.09 * s),
              _spr("disc", body_c, y_sh - 0.1 * s, cx, 0.065 * s)]
    layout += [_spr("capsule", skin_c, y_sh + 0.02 * h, cx + k * 0.08 * s, y_hand, cx + k * half, 0.02 * s)
               for k in (-1, 1)]
    layout += [_spr("rect", skin_c, y_hand, x, hh, hw) for x in (xl, xr)]

    def arc(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        high, q = p < 1, p - 1
        x = np.where(high, xl + (xr - xl) * p, xr - (xr - xl) * q)
        y = np.where(high, y_c - 4 * apex * p * (1 - p), y_c - 4 * low * q * (1 - q))
        return y, x

    phase = 2 * (t.u - t.ub) / cycle + 1  # ball 0 lands in the right hand at the branch
    q = 2 * t.wpost / cycle
    q_floor = (-1 + math.sqrt(1 + (y_floor - r - y_c) / apex)) / 2

    def build(outcome: str) -> list[_Sprite]:
        sprites = []
        for i, col in enumerate(ball_cs):
            y, x = arc((phase + 2 * i / 3) % 2)
            if i == 0 and outcome == "caught":
                y, x = t.branch(y, y_c), t.branch(x, xr)
            elif i == 0:
                qq = np.minimum(q, q_floor)
                yd = y_c + 4 * apex * qq * (1 + qq)
                xd = np.minimum(xr + (xr - xl) * (0.6 * qq + roll * np.maximum(q - q_floor, 0)), w - r - 0.03 * w)
                y, x = t.branch(y, yd), t.branch(x, xd)
            sprites.append(_spr("disc", col, y, x, r, n=n))
        return sprites

    return _Scene(bg, layout, build)


def _swinging(rng: np.random.Generator, t: _Time) -> _Scene:
    h, w, s, n = t.h, t.w, t.s, t.n
    bg = _color(rng)
    floor_c, beam_c, bob_c = _contrast(rng, bg, 0.2), _contrast(rng, bg, 0.3), _contrast(rng, bg, 0.4)
    rod_c = _contrast(rng, bg, 0.3)
    px, py, y_floor = w / 2 + w * rng.uniform(-0.05, 0.05), h * rng.uniform(0.08, 0.14), h * rng.uniform(0.88, 0.94)
    r_bob = s * rng.uniform(0.055, 0.075)
    length = y_floor - py - r_bob - h * rng.uniform(0.1, 0.18)
    amp, period, sign = rng.uniform(0.35, 0.6), rng.uniform(0.5, 0.8), rng.choice((-1.0, 1.0))
    amp = min(amp, math.asin(min(1.0, (min(px, w - px) - r_bob - 0.05 * w) / length)))  # stay in frame
    stub, t_fall = rng.uniform(0.25, 0.45), rng.uniform(0.08, 0.14)

    layout = [_spr("rect", floor_c, (y_floor + h) / 2 + 1, w / 2, (h - y_floor) / 2 + 1, w),
              _spr("rect", beam_c, py - 0.02 * s, px, 0.02 * s, 0.22 * s),
              _spr("disc", beam_c, py, px, 0.03 * s)]

    theta = sign * amp * np.sin(2 * np.pi * (t.u - t.ub) / period)  # at the bottom, fastest, at the branch
    y_bob, x_bob = py + length * np.cos(theta), px + length * np.sin(theta)
    wp = t.wpost
    room = (w - px if sign > 0 else px) - r_bob - 0.04 * w
    v = length * amp * 2 * np.pi / period
    drop = y_floor - r_bob - py - length

    def build(outcome: str) -> list[_Sprite]:
        if outcome == "intact":
            by, bx, ry, rx = y_bob, x_bob, y_bob, x_bob
        else:
            by = py + length + np.minimum(0.5 * (2 * drop / t_fall**2) * wp**2, drop)
            bx = px + sign * room * (1 - np.exp(-v * wp / room))
            ry, rx = t.branch(y_bob, py + stub * length), t.branch(x_bob, px)
            by, bx = t.branch(y_bob, by), t.branch(x_bob, bx)
        return [_spr("capsule", rod_c, py, px, ry, rx, max(0.5, 0.012 * s), n=n),
                _spr("disc", bob_c, by, bx, r_bob, n=n)]

    return _Scene(bg, layout, build)


def _sliding(rng: np.random.Generator, t: _Time) -> _Scene:
    h, w, s, n = t.h, t.w, t.s, t.n
    bg = _color(rng)
    floor_c, table_c, block_c = _contrast(rng, bg, 0.2), _contrast(rng, bg, 0.3), _contrast(rng, bg, 0.35)
    y_floor, y_top = h * rng.uniform(0.86, 0.93), h * rng.uniform(0.5, 0.62)
    thick, x_a, x_e = s * rng.uniform(0.035, 0.05), w * rng.uniform(0.03, 0.08), w * rng.uniform(0.55, 0.66)
    bhw, bhh = s * rng.uniform(0.06, 0.09), s * rng.uniform(0.05, 0.08)
    x0 = x_a + bhw + w * rng.uniform(0, 0.06)
    teeter, t_fall = bhw * rng.uniform(0.2, 0.7), rng.uniform(0.1, 0.15)

    leg_h = (y_floor - y_top - thick) / 2
    layout = [_spr("rect", floor_c, (y_floor + h) / 2 + 1, w / 2, (h - y_floor) / 2 + 1, w),
              _spr("rect", table_c, y_top + thick / 2, (x_a + x_e) / 2, thick / 2, (x_e - x_a) / 2)]
    layout += [_spr("rect", table_c, y_floor - leg_h, x, leg_h, 0.02 * s) for x in (x_a + 0.05 * w, x_e - 0.05 * w)]

    x_b = x_e - bhw  # the block's front reaches the edge at the branch
    v_b = 0.6 * (x_b - x0) / t.ub
    x_pre = x0 + (x_b - x0) * _ease(t.u / t.ub, 0.6)
    y_rest, wp = y_top - bhh, t.wpost

    def build(outcome: str) -> list[_Sprite]:
        if outcome == "stops":
            m = np.minimum(wp, 2 * teeter / v_b)
            x, y = x_b + v_b * m - 0.5 * (v_b**2 / (2 * teeter)) * m * m, y_rest
        else:
            w_edge, g = bhw / (0.95 * v_b), 2 * (y_floor - y_top) / t_fall**2
            fall = np.clip(wp - w_edge, 0, t_fall)
            x = np.minimum(x_b + 0.95 * v_b * np.minimum(wp, w_edge + t_fall), w - bhw - 0.03 * w)
            y = y_rest + 0.5 * g * fall**2
        return [_spr("rect", block_c, t.branch(y_rest, y), t.branch(x_pre, x), bhh, bhw, n=n)]

    return _Scene(bg, layout, build)


def _rolling(rng: np.random.Generator, t: _Time) -> _Scene:
    h, w, s, n = t.h, t.w, t.s, t.n
    bg = _color(rng)
    ground_c, rim_c, bump_c = _contrast(rng, bg, 0.2), _contrast(rng, bg, 0.35), _contrast(rng, bg, 0.3)
    spoke_c = _distinct(rng, [rim_c, bg], 0.4)
    y_g, radius = h * rng.uniform(0.74, 0.84), s * rng.uniform(0.09, 0.12)
    rim_w, arms, phi0 = radius * rng.uniform(0.2, 0.3), int(rng.integers(3, 5)), rng.uniform(0, 2 * np.pi)
    hb, bw, xbl = radius * rng.uniform(0.35, 0.55), s * rng.uniform(0.12, 0.2), w * rng.uniform(0.56, 0.64)
    x0 = max(w * rng.uniform(0.1, 0.2), radius + 2)
    bounce, t_b = radius * rng.uniform(0.3, 0.6), rng.uniform(0.1, 0.2)

    layout = [_spr("rect", ground_c, (y_g + h) / 2 + 1, w / 2, (h - y_g) / 2 + 1, w),
              _spr("rect", bump_c, y_g - hb / 2, xbl + bw / 2, hb / 2, bw / 2)]

    climb = math.sqrt(radius**2 - (radius - hb) ** 2)
    x_b, wp = xbl - climb, t.wpost  # the wheel touches the bump's corner at the branch
    v = (x_b - x0) / t.ub
    x_pre, y_rest = x0 + v * t.u, y_g - radius
    room = w - radius - 0.03 * w - x_b

    def build(outcome: str) -> list[_Sprite]:
        if outcome == "over":
            x = x_b + room * (1 - np.exp(-0.8 * v * wp / room))
            lift = hb * np.clip(np.minimum((x - x_b) / climb, (xbl + bw + climb - x) / climb), 0, 1)
            x, y = t.branch(x_pre, x), t.branch(y_rest, y_rest - lift)
        else:
            x, y = t.branch(x_pre, x_b - bounce * np.sin(np.pi / 2 * np.minimum(wp / t_b, 1))), y_rest
        phi = phi0 + (x - x0) / radius
        sprites = [_spr("ring", rim_c, y, x, radius - rim_w / 2, rim_w, n=n)]
        for k in range(arms):
            a = phi + 2 * np.pi * k / arms
            sprites.append(_spr("capsule", spoke_c, y, x, y + 0.8 * radius * np.sin(a),
                                x + 0.8 * radius * np.cos(a), max(0.5, 0.07 * radius), n=n))
        return sprites + [_spr("disc", spoke_c, y, x, 0.2 * radius, n=n)]

    return _Scene(bg, layout, build)


_SCENES = {"bowling": _bowling, "golf_putt": _golf_putt, "juggling": _juggling,
           "swinging": _swinging, "sliding": _sliding, "rolling": _rolling,
           # The event scenes take both settings; putt_marbles concerns marbles only.
           "skittles": lambda rng, t, event_setting=0.0, putt_marbles=0.0: _bowling(
               rng, t, lane=False, event_setting=event_setting),
           "marble": lambda rng, t, event_setting=0.0, putt_marbles=0.0: _golf_putt(
               rng, t, club=False, event_setting=event_setting, putt_marbles=putt_marbles)}
assert tuple(_SCENES) == ACTIONS


# ---------------------------------------------------------------------------------------------
# Rendering.
def _check(action: str, seed: int, frames: int, size: int | tuple[int, int],
           event_setting: float = 0.0, putt_marbles: float = 0.0) -> tuple[int, int]:
    for name, share in (("event_setting", event_setting), ("putt_marbles", putt_marbles)):
        if not isinstance(share, (int, float, np.floating)) or isinstance(share, bool) or not 0 <= share <= 1:
            raise ValueError(f"{name} must be a number in [0, 1], got {share!r}")
    if action not in OUTCOMES:
        raise ValueError(f"unknown action {action!r}; expected one of {ACTIONS}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    if not isinstance(frames, (int, np.integer)) or frames < MIN_FRAMES:
        raise ValueError(f"frames must be an int >= {MIN_FRAMES}, got {frames!r}")
    hw = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(hw) != 2 or not all(isinstance(v, (int, np.integer)) and v >= MIN_SIZE for v in hw):
        raise ValueError(f"size must be an int or (height, width), each >= {MIN_SIZE}, got {size!r}")
    return int(hw[0]), int(hw[1])


def _render(action: str, seed: int, outcomes: Sequence[str], frames: int,
            size: int | tuple[int, int], event_setting: float = 0.0, putt_marbles: float = 0.0,
            ) -> tuple[list[Clip], dict]:
    """Render several outcomes of one seed; everything random is drawn before the outcome matters."""
    h, w = _check(action, seed, frames, size, event_setting, putt_marbles)
    for o in outcomes:
        if o not in OUTCOMES[action]:
            raise ValueError(f"unknown outcome {o!r} for {action!r}; expected one of {OUTCOMES[action]}")
    rng = np.random.default_rng([int(seed), ACTIONS.index(action)])
    d = int(np.clip(round(rng.uniform(*DECISIVE) * (frames - 1)), 2, frames - 2))
    u = np.arange(frames) / (frames - 1)
    tl = _Time(frames, h, w, d, u, (d - 1) / (frames - 1))
    settings = (event_setting, putt_marbles) if action in EVENT_SCENES else ()
    scene = _SCENES[action](rng, tl, *settings)

    pad = max(1, round(min(h, w) / 64))  # camera jitter of up to `pad` pixels per frame
    shift = np.clip(np.round(rng.normal(0, rng.uniform(0, 0.7) * pad, (frames, 2))), -pad, pad).astype(int)
    flip = rng.uniform() < 0.5
    yy = (np.arange(h + 2 * pad, dtype=np.float32) - pad)[None, :, None]
    xx = (np.arange(w + 2 * pad, dtype=np.float32) - pad)[None, None, :]
    static = np.broadcast_to(scene.background.astype(np.float32), (1, h + 2 * pad, w + 2 * pad, 3)).copy()
    _paint(static, scene.layout, yy, xx)
    angle, (a_grad, a_smooth, a_grain) = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.15, 3) * (1, 1, 0.4)
    grad = (np.cos(angle) * yy[0] / h + np.sin(angle) * xx[0] / w) * 2 - (np.cos(angle) + np.sin(angle))
    texture = 1 + a_grad * grad + a_smooth * _smooth_noise(rng, h + 2 * pad, w + 2 * pad)
    static = static * texture[None, :, :, None].astype(np.float32)
    static += rng.normal(0, a_grain, static.shape[1:3])[None, :, :, None].astype(np.float32)
    noise = rng.standard_normal((frames, h, w, 3), dtype=np.float32) * np.float32(rng.uniform(0, 0.035))

    rows = pad + shift[:, :1] + np.arange(h)  # [frames, h]
    cols = pad + shift[:, 1:] + np.arange(w)
    sprites = {o: scene.build(o) for o in OUTCOMES[action]}
    clips = []
    for o in outcomes:
        canvas = np.repeat(static, frames, axis=0)
        _paint(canvas, sprites[o], yy, xx)
        clip = canvas[np.arange(frames)[:, None, None], rows[:, :, None], cols[:, None, :]] + noise
        clip = np.clip(clip * 255 + 0.5, 0, 255).astype(np.uint8)
        clips.append(np.ascontiguousarray(clip[:, :, ::-1]) if flip else clip)
    info = dict(action=action, seed=int(seed), frames=frames, height=h, width=w, decisive_frame=d,
                box=_outcome_box(*sprites.values(), d=d, h=h, w=w, pad=pad, flip=flip))
    return clips, info


def _outcome_box(a: list[_Sprite], b: list[_Sprite], d: int, h: int, w: int, pad: int, flip: bool):
    """Bounding box of every sprite whose geometry or opacity differs between the two outcomes."""
    assert len(a) == len(b)
    boxes = []
    for sa, sb in zip(a, b):
        diff = np.flatnonzero((sa.params != sb.params).any(0) | (sa.alpha != sb.alpha))
        assert diff.size == 0 or diff.min() >= d, "outcomes must agree before the decisive frame"
        boxes += [sp.extent(f) for sp in (sa, sb) if (f := diff[sp.alpha[diff] > 0]).size]
    if not boxes:
        return (0, 0, 0, 0)
    top, left, bot, right = np.array(boxes).T
    top, left = max(0, math.floor(top.min()) - pad), max(0, math.floor(left.min()) - pad)
    bot, right = min(h, math.ceil(bot.max()) + pad + 1), min(w, math.ceil(right.max()) + pad + 1)
    return (top, w - right, bot, w - left) if flip else (top, left, bot, right)


def render(action: str, seed: int, outcome: str | None = None, frames: int = 16,
           size: int | tuple[int, int] = 64, event_setting: float = 0.0, putt_marbles: float = 0.0,
           ) -> tuple[Clip, ClipSpec]:
    """One clip, uint8 [frames, height, width, 3], and its spec. `outcome=None`: drawn from the seed.
    `event_setting`, `putt_marbles`: see EVENT_ZOOM (event scenes only; the action scenes do not depend on them)."""
    _check(action, seed, frames, size, event_setting, putt_marbles)
    if outcome is None:
        outcome = OUTCOMES[action][int(np.random.default_rng([int(seed), ACTIONS.index(action), 1]).integers(2))]
    (clip,), info = _render(action, seed, [outcome], frames, size, event_setting, putt_marbles)
    return clip, ClipSpec(outcome=outcome, label=label_of(action, outcome), **info)


def render_pair(action: str, seed: int, frames: int = 16, size: int | tuple[int, int] = 64,
                event_setting: float = 0.0, putt_marbles: float = 0.0) -> tuple[Clip, Clip, PairSpec]:
    """(clean, corrupt, spec): the success and failure outcomes of one seed, identical before
    `spec.decisive_frame`. Clean = success, as in patching 'strike' activations into the 'gutter' run."""
    (clean, corrupt), info = _render(action, seed, OUTCOMES[action], frames, size, event_setting, putt_marbles)
    ok, bad = OUTCOMES[action]
    return clean, corrupt, PairSpec(clean_outcome=ok, corrupt_outcome=bad, label=label_of(action, ok),
                                    corrupt_label=label_of(action, bad), **info)


def classes(actions: Sequence[str] = ACTIONS) -> list[tuple[int, str, str | None]]:
    """The classes the given scenes produce: `(label, action, outcome)`, where `outcome` is None for an
    action scene (either outcome has this label) and the class's own outcome for an event scene."""
    unknown = [a for a in actions if a not in ACTIONS]
    if unknown or not actions:
        raise ValueError(f"actions must be a non-empty subset of {ACTIONS}, got {tuple(actions)}")
    out = []
    for a in dict.fromkeys(actions):
        for o in (OUTCOMES[a] if a in EVENT_SCENES else (None,)):
            out.append((label_of(a, o or OUTCOMES[a][0]), a, o))
    return sorted(out)


def dataset_plan(n: int, seed: int = 0, actions: Sequence[str] = ACTIONS) -> list[tuple[str, str, int]]:
    """What `dataset(n, seed, actions=actions)` renders, without rendering it: `(action, outcome, clip seed)` per
    clip, in order (to check, e.g., that measurement pairs never reuse a training clip's scene)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    table = classes(actions)
    rng = np.random.default_rng(seed)
    picks_class = rng.permutation(np.resize(np.arange(len(table)), n))
    seeds, picks = rng.integers(0, 2**31, n), rng.integers(0, 2, n)
    return [(table[c][1], table[c][2] or OUTCOMES[table[c][1]][k], int(s)) for c, s, k in zip(picks_class, seeds, picks)]


def dataset(n: int, seed: int = 0, frames: int = 16, size: int | tuple[int, int] = 64,
            actions: Sequence[str] = ACTIONS, with_specs: bool = False, event_setting: float = 0.0,
            putt_marbles: float = 0.0,
            ) -> tuple[UInt8[np.ndarray, "n frames height width 3"], Int64[np.ndarray, " n"]] | tuple[
                UInt8[np.ndarray, "n frames height width 3"], Int64[np.ndarray, " n"], list[ClipSpec]]:
    """`n` clips, uint8 [n, frames, h, w, 3], and int64 labels (index into LABELS), balanced over the
    classes of `actions` (counts differ by at most one) and shuffled; clip seeds drawn from `seed`.

    The label is all a training loss sees. For an action scene (bowling, golf_putt, ...) the outcome is
    drawn at random, independently of the label: the label says nothing about it. For an event scene
    the outcome is the class. `with_specs=True` also returns every clip's ClipSpec (outcomes, for probes).
    `event_setting`: the share of event clips drawn in the actions' settings; `putt_marbles`: the share of marble
    clips drawn as a putt without its club (see EVENT_ZOOM).
    """
    clips, specs = [], []
    for action, outcome, clip_seed in dataset_plan(n, seed, actions):
        clip, spec = render(action, clip_seed, outcome, frames, size, event_setting, putt_marbles)
        clips.append(clip)
        specs.append(spec)
    x = np.stack(clips)
    y = np.array([spec.label for spec in specs], np.int64)
    return (x, y, specs) if with_specs else (x, y)


def write_pair(out_dir: str | Path, action: str, seed: int, frames: int = 16,
               size: int | tuple[int, int] = 64, fps: int | float = 8) -> PairSpec:
    """Write clean.mp4, corrupt.mp4 and spec.json (the PairSpec, fps) into `out_dir`.

    The videos are lossless h264 (`video.save(..., lossless=True)`): `video.load` gives back exactly
    the rendered frames, so the two files are identical before the decisive frame. (At x264's usual
    lossy settings inter-frame coding would leak the outcome into earlier frames.)
    """
    from vivit_lens.io import video  # lazy: rendering alone does not need PyAV

    clean, corrupt, spec = render_pair(action, seed, frames, size)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, clip in (("clean", clean), ("corrupt", corrupt)):
        video.save(clip, out / f"{name}.mp4", fps, lossless=True)
    meta = dataclasses.asdict(spec) | {"fps": fps, "lossless": True}
    (out / "spec.json").write_text(json.dumps(meta, indent=2))
    return spec


def contact_sheet(path: str | Path, seed: int = 0, frames: int = 16, size: int = 64,
                  actions: Sequence[str] = ACTIONS, every: int = 1, scale: int = 2, show_box: bool = True) -> Path:
    """A PNG grid: two rows per action (clean, corrupt), every `every`-th frame, the decisive frame
    outlined in red and (after it) the outcome box in yellow."""
    from PIL import Image, ImageDraw

    ts = list(range(0, frames, every))
    cell, margin, label_w = size * scale, 2, 120
    sheet = Image.new("RGB", (label_w + len(ts) * (cell + margin), 2 * len(actions) * (cell + margin)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, action in enumerate(actions):
        clean, corrupt, spec = render_pair(action, seed, frames, size)
        for j, (clip, outcome) in enumerate(((clean, spec.clean_outcome), (corrupt, spec.corrupt_outcome))):
            y = (2 * i + j) * (cell + margin)
            draw.text((4, y + cell // 2 - 10), f"{action}\n{outcome} d={spec.decisive_frame}", fill="black")
            for k, t in enumerate(ts):
                x = label_w + k * (cell + margin)
                sheet.paste(Image.fromarray(clip[t]).resize((cell, cell), Image.NEAREST), (x, y))
                if show_box and t >= spec.decisive_frame:
                    top, left, bot, right = (v * scale for v in spec.box)
                    draw.rectangle((x + left, y + top, x + right - 1, y + bot - 1), outline="yellow")
                if t == spec.decisive_frame:
                    draw.rectangle((x, y, x + cell - 1, y + cell - 1), outline="red", width=2)
    path = Path(path)
    sheet.save(path)
    return path
