"""Benchmark: decode + sample + preprocess a 10 s 720p h264 clip, next to one ViViT-B forward.

    python benchmarks/bench_video.py                 # makes the clip in a temp dir, prints a table
    python benchmarks/bench_video.py --runs 7 --threads 2
    python benchmarks/bench_video.py --no-model      # input pipeline only

The clip is encoded with libx264 defaults (keyframe interval up to 250, B-frames), 30 fps: a textured
background panning under a moving white square. "cold" is the first load (it also reads the packet
table, cached afterwards); "warm" is the median of the following runs.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from vivit_lens import video


def make_clip(path: Path, seconds: float = 10, fps: int = 30, height: int = 720, width: int = 1280) -> Path:
    y, x = np.mgrid[:height, :width]
    base = np.stack([x * 215 // width, y * 215 // height, (x + y) * 215 // (width + height)], -1)
    texture = np.random.default_rng(0).integers(0, 40, (height // 4, width // 4, 3)).repeat(4, 0).repeat(4, 1)
    base = (base + texture).astype(np.uint8)  # a textured, panning background: a realistic bitrate
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = np.roll(base, 4 * i, axis=1)
            top, left = (i * 3) % (height - 120), (i * 11) % (width - 120)
            frame[top:top + 120, left:left + 120] = (255, 255, 255)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode(None))
    return path


def time_pipeline(path: Path, runs: int, num_frames: int) -> tuple[float, list[float], torch.Tensor]:
    times = []
    for _ in range(runs + 1):
        start = time.perf_counter()
        pixel_values = video.preprocess(video.load(path, num_frames=num_frames))
        times.append(time.perf_counter() - start)
    return times[0], times[1:], pixel_values


def time_forward(pixel_values: torch.Tensor) -> float:
    from transformers import VivitConfig, VivitForVideoClassification

    model = VivitForVideoClassification(VivitConfig(num_labels=400)).eval()
    with torch.no_grad():
        start = time.perf_counter()
        model(pixel_values=pixel_values)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="warm runs of load + preprocess (median)")
    parser.add_argument("--num-frames", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2, help="torch threads for the forward")
    parser.add_argument("--no-model", action="store_true", help="skip the ViViT-B forward")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        path = make_clip(Path(tmp) / "clip_720p_30fps.mp4")
        encode = time.perf_counter() - start
        megabytes = path.stat().st_size / 1e6
        cold, warm, pixel_values = time_pipeline(path, args.runs, args.num_frames)
        # split the warm time into its two parts, once more
        start = time.perf_counter()
        clip = video.load(path, num_frames=args.num_frames)
        load_s = time.perf_counter() - start
        start = time.perf_counter()
        video.preprocess(clip)
        prep_s = time.perf_counter() - start
    forward = None if args.no_model else time_forward(pixel_values)
    median = statistics.median(warm)
    rows = [
        ("clip", f"10 s 1280x720 h264 30 fps, {megabytes:.1f} MB (encoded in {encode:.1f} s)"),
        ("load + preprocess, cold (first, scans packets)", f"{cold:.3f} s"),
        (f"load + preprocess, warm (median of {len(warm)})", f"{median:.3f} s  (min {min(warm):.3f})"),
        ("  of which load / preprocess (one run)", f"{load_s:.3f} s / {prep_s:.3f} s"),
        ("pixel_values", f"{tuple(pixel_values.shape)} {pixel_values.dtype}"),
    ]
    if forward is not None:
        rows += [(f"HF ViViT-B forward ({args.threads} threads)", f"{forward:.3f} s"),
                 ("input pipeline / forward (warm)", f"{median / forward:.1%}")]
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {value}" for name, value in rows))


if __name__ == "__main__":
    main()
