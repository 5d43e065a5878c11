"""Video files <-> pixel tensors: decode and sample frames (PyAV), preprocess them exactly as
transformers' `VivitImageProcessor` does, and write frames back to an h264 mp4.

    clip = video.load("strike.mp4", num_frames=32)              # uniform over the whole clip
    pixel_values = video.preprocess(clip, model.processor)      # float32 [1, 32, 3, 224, 224]
    video.save(clip.frames, "strike_32.mp4", fps=8)

Conventions. A frame index is the frame's rank in presentation order in the source (0 is the first
frame shown); a timestamp is in seconds since that first frame. Frames come out upright (the
container's display matrix is applied as FFmpeg's autorotate does), as uint8 RGB; grey sources are
replicated to three channels and an alpha channel is dropped (not composited). The sample aspect
ratio is not applied: pixels are returned as stored.

Sampling policy. `num_frames=k` over `m` frames (the whole clip or the frames whose timestamp lies
in `[start, end)`) takes the centre frame of each of `k` equal segments: index `((2i + 1) m) // 2k`.
When `m < k` this repeats frames evenly (in order) and warns. Sampling is by frame rank, so on a
variable-frame-rate video the frames are spread evenly in count, not in time.

Decoding reads the packet table first (no decoding; cached per file version), then decodes only what
is needed: it seeks to the keyframe before a wanted frame when a keyframe lies between the last
decoded frame and it, and otherwise keeps decoding. Every failure raises a `VideoError` (a
`ValueError`) naming the file. A file counts as truncated or corrupt when FFmpeg cannot open it,
reports an error while reading its packets, holds fewer frames than its container declares (or, with
no declared count, ends well before its declared duration), or a wanted frame cannot be decoded.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import torch
from av.sidedata.sidedata import Type as SideDataType
from jaxtyping import Float, UInt8
from PIL import Image

from vivit_lens.models.config import ProcessorConfig

# The logger keeps the module's old name (vivit_lens.video), so that logging configurations written before the move work
logger = logging.getLogger("vivit_lens.video")

PathLike = str | os.PathLike
Frames = UInt8[np.ndarray, "frames height width 3"]
Seconds = float | int

__all__ = [
    "Clip", "CorruptVideoError", "FrameRangeError", "NoVideoStreamError", "VideoError", "VideoNotFoundError",
    "center_crop", "load", "load_processor", "preprocess", "resize_output_size", "save", "uniform_indices",
]  # fmt: skip

PROCESSOR_FILE = "preprocessor_config.json"
_SAVE_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")


# Errors -------------------------------------------------------------------------------------------
class VideoError(ValueError):
    """A video that cannot be read, or a request it cannot satisfy. The message names the file."""


class VideoNotFoundError(VideoError):
    """No file at the given path."""


class CorruptVideoError(VideoError):
    """Not a video at all, or a truncated or corrupt one."""


class NoVideoStreamError(VideoError):
    """A media file without a video stream (audio only, or only cover art)."""


class FrameRangeError(VideoError):
    """A time window or frame indices that the video does not have."""


class _IndexMismatch(Exception):
    """Decoded frames do not match the packet table; fall back to counting decoded frames."""


# Clip ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Clip:
    """Frames sampled from a video file, with where each one came from."""

    frames: Frames  # uint8 [frames, height, width, 3], upright RGB
    indices: np.ndarray  # int64 [frames]: source frame index (presentation order)
    timestamps: np.ndarray  # float64 [frames]: seconds since the source's first frame
    fps: float  # average frame rate of the source
    source: str  # path of the source file
    n_source_frames: int  # frames in the source
    duration: float  # seconds the source lasts (first frame shown to last frame gone)

    def __len__(self) -> int:
        return len(self.frames)

    def __repr__(self) -> str:
        n, h, w, _ = self.frames.shape
        return (f"Clip({n} frames {h}x{w} from {self.source!r}, indices {self.indices[0]}..{self.indices[-1]} "
                f"of {self.n_source_frames}, {self.fps:.3f} fps)")


# Packet table -------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class _Index:
    """Presentation-ordered frame table of a video stream."""

    pts: np.ndarray  # int64 [n], strictly increasing: pts of frame i, in time_base units
    dts: np.ndarray  # int64 [n]: decode timestamp of frame i's packet (pts where unknown), for seeking
    keyframes: np.ndarray  # int64: sorted frame indices of keyframes
    time_base: Fraction
    end_pts: int  # when the last frame stops being shown
    fps: float

    @property
    def n(self) -> int:
        return len(self.pts)

    def seconds(self, pts: np.ndarray) -> np.ndarray:
        """Seconds since the first frame: one float rounding of the exact ratio."""
        ticks = (np.asarray(pts, dtype=np.int64) - self.pts[0]) * self.time_base.numerator
        return ticks.astype(np.float64) / self.time_base.denominator

    @property
    def duration(self) -> float:
        return float(self.seconds(np.array([self.end_pts]))[0])

    def anchor(self, i: int) -> int:
        """The last keyframe at or before frame i (0 when none is)."""
        k = np.searchsorted(self.keyframes, i, side="right") - 1
        return int(self.keyframes[k]) if k >= 0 else 0

    def lookup(self, pts: int | None) -> int:
        i = int(np.searchsorted(self.pts, pts)) if pts is not None else self.n
        if i == self.n or self.pts[i] != pts:
            raise _IndexMismatch(f"decoded frame pts {pts} is not in the packet table")
        return i


def _make_index(pts: np.ndarray, dts: np.ndarray, keyframes: np.ndarray, time_base: Fraction,
                last_duration: int, rate: Fraction | None) -> _Index:
    keyframes = keyframes if keyframes.size else np.zeros(1, dtype=np.int64)  # unflagged: decode from the start
    step = last_duration or (int(np.median(np.diff(pts))) if len(pts) > 1 else 0)
    if not step and rate:
        step = round(1 / (rate * time_base))
    index = _Index(pts, dts, keyframes, time_base, int(pts[-1]) + max(1, step), float(rate or 0))
    if not index.fps:  # no nominal rate: frames per second of the timeline
        index = replace(index, fps=index.n / index.duration)
    return index


_INDEX_CACHE: OrderedDict[tuple, _Index | None] = OrderedDict()
_INDEX_CACHE_SIZE = 32


def _index_of(path: Path) -> _Index | None:
    """The packet table of `path` (cached per file version); None when packets lack usable pts."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _INDEX_CACHE:
        with _open(path) as (container, stream):
            _INDEX_CACHE[key] = _scan(container, stream, path)
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    _INDEX_CACHE.move_to_end(key)
    return _INDEX_CACHE[key]


@contextmanager
def _ffmpeg_errors() -> Iterator[list[tuple[int, str, str]]]:
    """Collect FFmpeg's error messages (PyAV ignores them by default), restoring PyAV's log level."""
    previous = av.logging.get_level()
    av.logging.set_level(av.logging.ERROR if previous is None else max(previous, av.logging.ERROR))
    try:
        with av.logging.Capture(local=False) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)
    logs[:] = [log for log in logs if log[0] <= av.logging.ERROR]


def _scan(container: Any, stream: Any, path: Path) -> _Index | None:
    """Read the packet table without decoding; check it against what the container declares."""
    rows: list[tuple[int | None, int | None, bool, int]] = []
    n_packets = 0
    with _ffmpeg_errors() as errors:
        try:
            for packet in container.demux(stream):
                if packet.size == 0:  # the flush packet at end of file
                    continue
                n_packets += 1
                if not packet.is_discard:
                    rows.append((packet.pts, packet.dts, packet.is_keyframe, packet.duration or 0))
        except av.FFmpegError as e:
            raise CorruptVideoError(f"{path}: reading the video packets failed ({e}); truncated or corrupt") from e
    if errors:
        raise CorruptVideoError(f"{path}: the container is damaged (FFmpeg: {errors[0][2].strip()}); "
                                "truncated or corrupt")
    if not rows:
        raise CorruptVideoError(f"{path}: the video stream has no frames")
    if stream.frames and n_packets < stream.frames:
        raise CorruptVideoError(f"{path}: the container declares {stream.frames} frames but only {n_packets} "
                                "can be read; the file is truncated or corrupt")
    raw = [r[0] for r in rows]
    if None in raw or len(set(raw)) != len(raw):
        return None
    order = np.argsort(np.asarray(raw, dtype=np.int64), kind="stable")
    pts = np.asarray(raw, dtype=np.int64)[order]
    dts = np.asarray([r[0] if r[1] is None else r[1] for r in rows], dtype=np.int64)[order]
    keyframes = np.flatnonzero(np.asarray([r[2] for r in rows], dtype=bool)[order])
    index = _make_index(pts, dts, keyframes, Fraction(stream.time_base), rows[order[-1]][3],
                        stream.average_rate or stream.guessed_rate)
    if not stream.frames:  # no declared frame count to check against: compare durations instead
        _check_duration(index, _declared_seconds(container, stream), path)
    return index


def _declared_seconds(container: Any, stream: Any) -> float | None:
    """How long the container says the video stream lasts, where it says so for that stream."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = stream.metadata.get("DURATION")  # Matroska / WebM
    if tag:
        try:
            h, m, s = tag.split(":")
            return int(h) * 3600 + int(m) * 60 + float(s)
        except ValueError:
            return None
    if container.duration and len(container.streams) == 1:
        return container.duration / av.time_base
    return None


def _check_duration(index: _Index, declared: float | None, path: Path) -> None:
    if declared is not None and index.duration < declared - max(0.25, 3 / index.fps):
        raise CorruptVideoError(f"{path}: the container says the video lasts {declared:.3f} s but its frames "
                                f"stop at {index.duration:.3f} s; the file is truncated or corrupt")


def _scan_by_decoding(path: Path) -> _Index:
    """Frame table from decoding every frame, for streams whose packets lack usable pts."""
    with _open(path) as (container, stream):
        rate = stream.average_rate or stream.guessed_rate
        time_base = Fraction(stream.time_base) if stream.time_base else None
        try:
            times = [frame.pts for frame in container.decode(stream)]
        except av.FFmpegError as e:
            raise CorruptVideoError(f"{path}: decoding failed ({e}); the file is corrupt") from e
    if not times:
        raise CorruptVideoError(f"{path}: no frame of the video stream could be decoded")
    if None in times or time_base is None or any(b <= a for a, b in zip(times, times[1:])):
        time_base = 1 / Fraction(rate) if rate else Fraction(1, 25)  # frame ordinals at the nominal rate
        times = list(range(len(times)))
    pts = np.asarray(times, dtype=np.int64)
    return _make_index(pts, pts, np.zeros(1, dtype=np.int64), time_base, 0, rate)


# Opening ------------------------------------------------------------------------------------------
def _check_path(path: PathLike) -> Path:
    path = Path(path)
    if not path.exists():
        raise VideoNotFoundError(f"{path}: no such file")
    if not path.is_file():
        raise VideoError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CorruptVideoError(f"{path}: the file is empty")
    return path


def _open_container(path: Path) -> tuple[Any, Any]:
    """Open `path` and pick its video stream; every PyAV failure becomes a VideoError."""
    try:
        container = av.open(str(path))
    except av.FFmpegError as e:
        raise CorruptVideoError(f"{path}: cannot be opened as a video ({e.strerror or e}); not a video, "
                                "or a truncated or corrupt one") from e
    streams = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
    problem = None
    if not streams:
        kinds = ", ".join(sorted({s.type for s in container.streams})) or "none"
        problem = NoVideoStreamError(f"{path}: the file has no video stream (streams: {kinds})")
    elif streams[0].codec_context is None:
        problem = CorruptVideoError(f"{path}: no decoder for the video codec of this file")
    if problem is not None:
        container.close()
        raise problem
    streams[0].thread_type = "AUTO"
    return container, streams[0]


@contextmanager
def _open(path: Path) -> Iterator[tuple[Any, Any]]:
    container, stream = _open_container(path)
    try:
        yield container, stream
    finally:
        container.close()


# Sampling -----------------------------------------------------------------------------------------
def uniform_indices(n_available: int, num_frames: int) -> np.ndarray:
    """Centre of each of `num_frames` equal segments of `range(n_available)`; repeats when too few."""
    if n_available < 1 or num_frames < 1:
        raise ValueError(f"need at least one frame and one sample, got {n_available} and {num_frames}")
    i = np.arange(num_frames, dtype=np.int64)
    return ((2 * i + 1) * n_available) // (2 * num_frames)


def _check_request(num_frames: Any, indices: Any, start: Any, end: Any) -> None:
    if indices is not None and (num_frames is not None or start is not None or end is not None):
        raise ValueError("pass either indices or num_frames/start/end, not both")
    if num_frames is not None and (isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer))
                                   or num_frames < 1):
        raise ValueError(f"num_frames must be a positive int, got {num_frames!r}")
    for name, value in (("start", start), ("end", end)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float, np.number))
                                  or not math.isfinite(value)):
            raise ValueError(f"{name} must be a finite number of seconds, got {value!r}")


def _as_indices(indices: Any) -> np.ndarray:
    arr = np.asarray(indices.cpu() if isinstance(indices, torch.Tensor) else indices)
    if arr.ndim != 1 or arr.size == 0 or not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"indices must be a non-empty 1-d sequence of ints, got {indices!r}")
    return arr.astype(np.int64)


def _select(index: _Index, num_frames: int | None, indices: Any, start: Seconds | None, end: Seconds | None,
            path: Path) -> np.ndarray:
    if indices is not None:
        wanted = _as_indices(indices)
        bad = wanted[(wanted < 0) | (wanted >= index.n)]
        if bad.size:
            raise FrameRangeError(f"{path}: frame indices {bad.tolist()[:8]} are out of range; "
                                  f"the video has {index.n} frames (0..{index.n - 1})")
        return wanted
    lo, hi = _window(index, start, end, path)
    if num_frames is None:
        return np.arange(lo, hi, dtype=np.int64)
    if hi - lo < num_frames:
        where = "the window" if start is not None or end is not None else "the video"
        warnings.warn(f"{path}: {num_frames} frames requested but {where} has only {hi - lo}; "
                      "repeating frames evenly", stacklevel=3)
    return lo + uniform_indices(hi - lo, num_frames)


def _window(index: _Index, start: Seconds | None, end: Seconds | None, path: Path) -> tuple[int, int]:
    """Frame range [lo, hi) of the frames whose timestamp t satisfies start <= t < end."""
    if start is None and end is None:
        return 0, index.n
    duration = index.duration
    s = 0.0 if start is None else float(start)
    e = duration if end is None else float(end)
    problem = ("start is negative" if s < 0 else
               "start is at or after the end of the video" if s >= duration else
               "end is not after start" if e <= s else
               "end is after the end of the video" if e > duration + duration / index.n else None)
    if problem:
        raise FrameRangeError(f"{path}: impossible window [{s}, {e}) s: {problem} "
                              f"(the video lasts {duration:.3f} s)")
    seconds = index.seconds(index.pts)  # the timestamps a Clip reports, so that a frame at t=start is in
    lo, hi = (int(i) for i in np.searchsorted(seconds, [s, e], side="left"))
    if hi <= lo:
        raise FrameRangeError(f"{path}: no frame starts within the window [{s}, {e}) s")
    return lo, hi


# Decoding -----------------------------------------------------------------------------------------
def _display_matrix(frame: av.VideoFrame) -> np.ndarray | None:
    # Looked up by type: PyAV < 18 iterates side data as SideData objects, PyAV >= 18 as a mapping's keys.
    side = frame.side_data.get(SideDataType.DISPLAYMATRIX)
    return None if side is None else np.frombuffer(bytes(side), dtype=np.int32)


def _upright(frame: av.VideoFrame, rgb: np.ndarray) -> np.ndarray:
    """Apply the display matrix as FFmpeg's autorotate does (right angles and flips)."""
    m = _display_matrix(frame)
    if m is None:
        return rgb
    sx, sy = math.hypot(m[0], m[3]), math.hypot(m[1], m[4])
    if sx == 0 or sy == 0:
        return rgb
    theta = -round(-math.degrees(math.atan2(m[1] / sy, m[0] / sx)))  # clockwise degrees
    theta -= 360 * math.floor(theta / 360 + 0.9 / 360)
    if abs(theta - 90) < 1:
        out = rgb.transpose(1, 0, 2) if m[3] > 0 else np.rot90(rgb, -1)
    elif abs(theta - 180) < 1:
        out = rgb[:, ::-1] if m[0] < 0 else rgb
        out = out[::-1] if m[4] < 0 else out
    elif abs(theta - 270) < 1:
        out = rgb[::-1, ::-1].transpose(1, 0, 2) if m[3] < 0 else np.rot90(rgb, 1)
    elif abs(theta) > 1:
        warnings.warn(f"display rotation of {theta:.0f} degrees is not a right angle; frames left as stored",
                      stacklevel=2)
        out = rgb
    else:
        out = rgb[::-1] if m[4] < 0 else rgb
    return np.ascontiguousarray(out)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    return _upright(frame, frame.to_ndarray(format="rgb24"))


def _runs(index: _Index, wanted: np.ndarray) -> list[np.ndarray]:
    """Split sorted wanted frames where seeking to a keyframe skips frames that would be decoded."""
    k = np.searchsorted(index.keyframes, wanted, side="right") - 1
    anchors = np.where(k >= 0, index.keyframes[np.maximum(k, 0)], 0)  # vectorised `index.anchor`
    return np.split(wanted, np.flatnonzero(anchors[1:] > wanted[:-1] + 1) + 1)


class _Reader:
    """One open video, started at a keyframe by seeking, or at the first packet by (re)opening."""

    def __init__(self, path: Path, index: _Index):
        self.path, self.index = path, index
        self.container, self.stream = _open_container(path)
        self.fresh = True  # positioned at the first packet
        self.by_dts = False  # AVI and some others seek by decode time, not presentation time
        self.decoded = 0

    def start_at(self, anchor: int) -> int:
        """Position before keyframe `anchor`; returns the anchor really used (0 after a re-open)."""
        if anchor > 0:
            stamps = self.index.dts if self.by_dts else self.index.pts
            try:
                self.container.seek(int(stamps[anchor]), stream=self.stream, backward=True)
                self.fresh = False
                return anchor
            except av.FFmpegError as e:
                logger.info("%s: seeking failed (%s); decoding from the start", self.path, e)
        if not self.fresh:
            self.close()
            self.container, self.stream = _open_container(self.path)
        self.fresh = False
        return 0

    def collect(self, todo: set[int], got: dict[int, np.ndarray], last: int) -> int | None:
        """Decode until every frame in `todo` is in `got` or frame `last` is passed; first frame seen."""
        first = None
        try:
            for frame in self.container.decode(self.stream):
                self.decoded += 1
                i = self.index.lookup(frame.pts)
                first = i if first is None else first
                if i in todo and not frame.is_corrupt:
                    got[i] = _to_rgb(frame)
                    todo.discard(i)
                if not todo or i >= last:
                    break
        except av.FFmpegError as e:
            raise CorruptVideoError(f"{self.path}: decoding failed ({e}); the file is corrupt") from e
        return first

    def close(self) -> None:
        self.container.close()


def _decode_run(reader: _Reader, run: np.ndarray, got: dict[int, np.ndarray]) -> None:
    todo, last = set(run.tolist()), int(run[-1])
    anchor = reader.index.anchor(int(run[0]))
    while True:
        anchor = reader.start_at(anchor)
        first = reader.collect(todo, got, last)
        if not todo:
            return
        if anchor == 0:
            raise CorruptVideoError(f"{reader.path}: frames {sorted(todo)[:8]} could not be decoded; "
                                    "the file is truncated or corrupt")
        if first is not None and first > anchor and not reader.by_dts:
            reader.by_dts = True  # the seek landed after the keyframe: retry it by decode time
        else:
            anchor = reader.index.anchor(anchor - 1)


def _decode_by_pts(path: Path, index: _Index, wanted: np.ndarray) -> dict[int, np.ndarray]:
    got: dict[int, np.ndarray] = {}
    runs = _runs(index, wanted)
    reader = _Reader(path, index)
    try:
        for run in runs:
            _decode_run(reader, run, got)
    finally:
        reader.close()
    logger.debug("%s: decoded %d frames in %d runs for %d wanted", path, reader.decoded, len(runs), len(wanted))
    return got


def _decode_by_counting(path: Path, wanted: np.ndarray) -> dict[int, np.ndarray]:
    got: dict[int, np.ndarray] = {}
    todo = set(wanted.tolist())
    with _open(path) as (container, stream):
        try:
            for i, frame in enumerate(container.decode(stream)):
                if i in todo:
                    got[i] = _to_rgb(frame)
                    todo.discard(i)
                if not todo:
                    break
        except av.FFmpegError as e:
            raise CorruptVideoError(f"{path}: decoding failed ({e}); the file is corrupt") from e
    if todo:
        raise CorruptVideoError(f"{path}: frames {sorted(todo)[:8]} could not be decoded")
    return got


def load(path: PathLike, num_frames: int | None = None, *,
         indices: Sequence[int] | np.ndarray | torch.Tensor | None = None,
         start: Seconds | None = None, end: Seconds | None = None) -> Clip:
    """Decode frames of a video file: `num_frames` uniformly over the clip or over the window
    `[start, end)` seconds, or the exact source frames `indices` (any order, repeats allowed).
    With neither, every frame (of the window) is returned. See the module docstring for the policy.
    """
    _check_request(num_frames, indices, start, end)
    path = _check_path(path)
    index = _index_of(path)
    got: dict[int, np.ndarray] | None = None
    if index is not None:
        wanted = _select(index, num_frames, indices, start, end, path)
        try:
            got = _decode_by_pts(path, index, np.unique(wanted))
        except _IndexMismatch as e:
            logger.info("%s: %s; counting decoded frames instead", path, e)
    if got is None:
        index = _scan_by_decoding(path)
        wanted = _select(index, num_frames, indices, start, end, path)
        got = _decode_by_counting(path, np.unique(wanted))
    shapes = sorted({frame.shape for frame in got.values()})
    if len(shapes) > 1:
        raise VideoError(f"{path}: the frame size changes within the video ({shapes}); not supported")
    return Clip(frames=np.stack([got[int(i)] for i in wanted]), indices=wanted,
                timestamps=index.seconds(index.pts[wanted]), fps=index.fps, source=str(path),
                n_source_frames=index.n, duration=index.duration)


# Preprocessing ------------------------------------------------------------------------------------
def load_processor(folder: PathLike) -> ProcessorConfig:
    """The preprocessing of a model folder: its `preprocessor_config.json`, or the defaults."""
    folder = Path(folder)
    if folder.is_file():
        return ProcessorConfig.from_json(folder)
    if not folder.is_dir():
        raise ValueError(f"{folder}: no such model folder")
    file = folder / PROCESSOR_FILE
    if not file.is_file():
        logger.info("%s has no %s; using VivitImageProcessor defaults", folder, PROCESSOR_FILE)
        return ProcessorConfig()
    return ProcessorConfig.from_json(file)


def _as_frames(video: Any, what: str) -> Frames:
    if isinstance(video, Clip):
        return video.frames
    if isinstance(video, torch.Tensor):
        video = video.detach().cpu().numpy()
    if isinstance(video, (list, tuple)):
        video = np.stack([_as_frame(f, what) for f in video]) if video else np.empty((0,))
    if not isinstance(video, np.ndarray):
        raise TypeError(f"{what}: expected a Clip or uint8 frames [frames, height, width, 3], got {type(video)}")
    if video.ndim != 4 or video.shape[-1] != 3 or 0 in video.shape:
        raise ValueError(f"{what}: expected uint8 frames [frames, height, width, 3], got shape {video.shape}")
    if video.dtype != np.uint8:
        raise ValueError(f"{what}: expected uint8 pixel values 0..255, got dtype {video.dtype}")
    return video


def _as_frame(frame: Any, what: str) -> np.ndarray:
    frame = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if frame.ndim != 3:
        raise ValueError(f"{what}: expected frames [height, width, 3], got shape {frame.shape}")
    return frame


def _as_videos(video: Any) -> list[Frames]:
    """A batch of videos from a Clip, an array [f, h, w, 3] or [b, f, h, w, 3], or a list of either;
    a list of [h, w, 3] frames is one video."""
    if isinstance(video, (list, tuple)) and video and (
            isinstance(video[0], Clip) or getattr(video[0], "ndim", 0) == 4):
        return [_as_frames(v, f"video {i}") for i, v in enumerate(video)]
    if getattr(video, "ndim", 0) == 5:
        return [_as_frames(v, f"video {i}") for i, v in enumerate(video)]
    return [_as_frames(video, "video")]


def resize_output_size(height: int, width: int, shortest_edge: int) -> tuple[int, int]:
    """(height, width) after resizing the shortest edge, rounded as transformers does."""
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(shortest_edge * long / short)
    return (new_long, shortest_edge) if width <= height else (shortest_edge, new_long)


def _resize_size(frames: Frames, processor: ProcessorConfig) -> tuple[int, int] | None:
    """The (height, width) the processor resizes `frames` to, or None where it leaves them as they are: no resize, or
    one to the size they have (PIL's resize to a frame's own size is a copy: Image.resize's self.copy())."""
    size = resize_output_size(frames.shape[1], frames.shape[2], processor.shortest_edge)
    return size if processor.do_resize and size != frames.shape[1:3] else None


def _resize(frames: Frames, processor: ProcessorConfig, pool: ThreadPoolExecutor | None = None) -> np.ndarray:
    """Frames resized as VivitImageProcessor does (PIL, frame by frame), on `pool`'s threads when one is given."""
    size = _resize_size(frames, processor)
    if size is None:
        return frames
    h, w = size

    def one(frame: np.ndarray) -> np.ndarray:
        return np.asarray(Image.fromarray(frame).resize((w, h), resample=processor.resample))

    return np.stack(list(pool.map(one, frames)) if pool is not None else [one(f) for f in frames])


def center_crop(frames: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Crop [.., h, w, c] to `size` around the centre with transformers' offsets, zero-padding if smaller."""
    h, w = frames.shape[-3:-1]
    ch, cw = size
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return frames[..., top:top + ch, left:left + cw, :]
    nh, nw = max(ch, h), max(cw, w)
    pad_top, pad_left = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    canvas = np.zeros(frames.shape[:-3] + (nh, nw, frames.shape[-1]), dtype=frames.dtype)
    canvas[..., pad_top:pad_top + h, pad_left:pad_left + w, :] = frames
    top, left = top + pad_top, left + pad_left
    return canvas[..., max(0, top):min(nh, top + ch), max(0, left):min(nw, left + cw), :]


def _value_table(processor: ProcessorConfig) -> np.ndarray:
    """float32 [3, 256]: output of rescale/offset/normalise for each uint8 value per channel,
    computed with transformers' operations and dtypes, so a gather reproduces them exactly."""
    x = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)  # [value, channel], channels last
    if processor.offset and not processor.do_rescale:
        raise ValueError("offset=True needs do_rescale=True (as in VivitImageProcessor)")
    if processor.do_rescale:
        x = (x.astype(np.float64) * processor.rescale_factor).astype(np.float32)
        if processor.offset:
            x = x - 1
    if processor.do_normalize:
        x = x.astype(np.float32) if not np.issubdtype(x.dtype, np.floating) else x
        mean = np.array(processor.image_mean, dtype=x.dtype)
        std = np.array(processor.image_std, dtype=x.dtype)
        x = (x - mean) / std
    return np.ascontiguousarray(x.astype(np.float32).T)


def _preprocess_one(frames: Frames, processor: ProcessorConfig,
                    pool: ThreadPoolExecutor | None = None) -> Float[np.ndarray, "frames 3 crop_h crop_w"]:
    frames = _resize(frames, processor, pool)
    if processor.do_center_crop:
        frames = center_crop(frames, processor.crop_size)
    table = _value_table(processor)
    out = np.empty((frames.shape[0], 3) + frames.shape[1:3], dtype=np.float32)  # f c h w
    for c in range(3):
        out[:, c] = table[c][frames[..., c]]
    return out


def preprocess(video: Clip | np.ndarray | torch.Tensor | Sequence[Any],
               processor: ProcessorConfig | None = None) -> Float[torch.Tensor, "batch frames channels height width"]:
    """Model input from frames, identical to transformers' `VivitImageProcessor` on the same uint8 frames:
    resize the shortest edge (PIL), centre-crop, rescale (with offset), normalise.

    `video`: a Clip, uint8 frames [frames, height, width, 3] (numpy or torch), a list of [h, w, 3] frames,
    or a batch (a list of Clips / frame arrays, or an array [batch, frames, h, w, 3]) whose videos have
    the same frame count. `processor`: a ProcessorConfig (`model.processor`); None means the defaults.
    """
    processor = ProcessorConfig() if processor is None else processor
    if not isinstance(processor, ProcessorConfig):
        raise TypeError(f"processor must be a vivit_lens.config.ProcessorConfig or None, got {type(processor)}")
    videos = _as_videos(video)
    # One thread pool for the whole call, and only when frames are really resized (PIL releases the GIL).
    frames_to_resize = sum(len(v) for v in videos if _resize_size(v, processor) is not None)
    with (ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) if frames_to_resize > 1
          else nullcontext()) as pool:
        outs = [_preprocess_one(v, processor, pool) for v in videos]
    shapes = {o.shape for o in outs}
    if len(shapes) > 1:
        raise ValueError(f"videos of a batch must give the same shape, got {sorted(shapes)}")
    return torch.from_numpy(np.stack(outs))


# Writing ------------------------------------------------------------------------------------------
def _fps_fraction(fps: Any) -> Fraction:
    if isinstance(fps, bool) or not isinstance(fps, (int, float, Fraction, np.number)) or not fps > 0 \
            or not math.isfinite(fps):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps


def save(frames: Clip | np.ndarray | torch.Tensor | Sequence[np.ndarray], path: PathLike,
         fps: float | int | Fraction, *, crf: int = 18, lossless: bool = False) -> Path:
    """Write uint8 frames [frames, height, width, 3] as h264 to a .mp4, .m4v, .mov or .mkv file.

    Default: yuv420p, which every player reads; it needs even sizes, so an odd height or width is
    padded by one edge-replicated row or column (with a warning). `crf` is x264's quality (0 best,
    51 worst; 18 is visually lossless). `lossless=True` writes RGB losslessly instead (x264 High 4:4:4,
    qp 0; any size, no padding): `load` gives back exactly these frames, but some players cannot play it.
    """
    path = Path(path)
    arr = _as_frames(frames, f"save {path}")
    if path.suffix.lower() not in _SAVE_SUFFIXES:
        raise ValueError(f"{path}: save writes h264 into {', '.join(_SAVE_SUFFIXES)} files")
    if not path.parent.is_dir():
        raise VideoError(f"{path}: cannot write it, the folder {path.parent} does not exist")
    if path.is_dir():
        raise VideoError(f"{path}: cannot write it, a folder of that name exists")
    if isinstance(crf, bool) or not isinstance(crf, (int, np.integer)) or not 0 <= crf <= 51:
        raise ValueError(f"{path}: crf must be an int in 0..51 (x264 quality: 0 best, 18 visually lossless), "
                         f"got {crf!r}")  # fmt: skip
    rate = _fps_fraction(fps)
    _, h, w, _ = arr.shape
    if not lossless and (h % 2 or w % 2):
        warnings.warn(f"{path}: h264 yuv420p needs even sizes; padding {h}x{w} to {h + h % 2}x{w + w % 2}",
                      stacklevel=2)
        arr = np.pad(arr, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    codec, pix_fmt, options = ("libx264rgb", "rgb24", {"qp": "0"}) if lossless else \
        ("libx264", "yuv420p", {"crf": str(int(crf))})
    muxer_options = {"movflags": "+faststart"} if path.suffix.lower() in (".mp4", ".m4v", ".mov") else {}
    # Written beside the target and moved into place when complete: an interrupted save leaves no partial video.
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        with av.open(str(partial), "w", options=muxer_options) as container:
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height, stream.pix_fmt = arr.shape[2], arr.shape[1], pix_fmt
            stream.options = options
            for image in arr:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(partial, path)
    except BaseException as e:
        try:
            partial.unlink(missing_ok=True)
        except OSError:  # clean-up must not hide the real error
            pass
        if isinstance(e, OSError):
            raise VideoError(f"{path}: cannot write it ({e.strerror or e})") from e
        raise
    return path
