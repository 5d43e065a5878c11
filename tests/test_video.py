"""Tests of vivit_lens.video against independent references: plain PyAV decoding, frame contents
that encode their own index, known pts, numpy rotations, and transformers' VivitImageProcessor."""

from __future__ import annotations

import json
import logging
import re
import warnings
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from transformers import VivitImageProcessor
from transformers.image_transforms import get_resize_output_image_size

from vivit_lens import video
from vivit_lens.config import ProcessorConfig

LEVELS = (0, 36, 73, 109, 146, 182, 219, 255)  # exact in GIF's rgb8 palette too
HAS_VP9 = "libvpx-vp9" in av.codecs_available


# Synthetic videos -------------------------------------------------------------------------------
def colour(i: int) -> tuple[int, int, int]:
    """Background colour that identifies frame i (up to 64 frames), 36 levels apart per channel."""
    return LEVELS[i % 8], LEVELS[(i // 8) % 8], 0


def square_x(i: int, w: int) -> int:
    return (4 * i) % (w - 8)


def frame_image(i: int, h: int, w: int) -> np.ndarray:
    """Frame i: its identifying colour, with a white 8x8 square moving right along the bottom."""
    img = np.empty((h, w, 3), np.uint8)
    img[:] = colour(i)
    x = square_x(i, w)
    img[h - 12:h - 4, x:x + 8] = 255
    return img


def write_video(path, images, fps=10, codec="libx264", pix_fmt="yuv420p", options=None, pts=None,
                rotation=None, hflip=False, vflip=False):
    """Encode uint8 RGB images [n, h, w, 3] (or gray [n, h, w]) with PyAV; pts in ms if given."""
    images = np.asarray(images)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = images.shape[1:3]
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        if rotation is not None or hflip or vflip:
            stream.set_display_rotation(rotation or 0, hflip=hflip, vflip=vflip)
        fmt = {2: "gray", 3: {3: "rgb24", 4: "rgba"}.get(images.shape[-1])}[images.ndim - 1]
        for i, image in enumerate(images):
            frame = av.VideoFrame.from_ndarray(image, format=fmt)
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def moving_video(path, n=20, h=40, w=56, **kwargs):
    return write_video(path, [frame_image(i, h, w) for i in range(n)], **kwargs)


def pyav_frames(path) -> np.ndarray:
    """Reference: every frame, decoded sequentially by plain PyAV."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def identify(frames: np.ndarray) -> list[int]:
    """Which frame each decoded frame shows, from its background colour (top rows)."""
    palette = np.array([colour(i) for i in range(64)], dtype=float)
    means = frames[:, :frames.shape[1] // 3].reshape(len(frames), -1, 3).mean(axis=1)
    return np.abs(means[:, None, :] - palette[None]).sum(-1).argmin(1).tolist()


CONTAINERS = [
    pytest.param("mp4", "libx264", "yuv420p", {"g": "6", "bf": "2"}, id="mp4-h264"),
    pytest.param("webm", "libvpx-vp9", "yuv420p", {"g": "6"}, id="webm-vp9",
                 marks=pytest.mark.skipif(not HAS_VP9, reason="no VP9 encoder")),
    pytest.param("avi", "mpeg4", "yuv420p", {"g": "6", "bf": "2"}, id="avi-mpeg4"),
    pytest.param("avi", "mjpeg", "yuvj420p", None, id="avi-mjpeg"),
    pytest.param("mov", "libx264", "yuv420p", {"g": "6"}, id="mov-h264"),
    pytest.param("mkv", "libx264", "yuv420p", {"bf": "3", "x264-params": "keyint=6:open-gop=1"}, id="mkv-h264-opengop"),
    pytest.param("gif", "gif", "rgb8", None, id="gif"),
]


# Decoding and sampling ---------------------------------------------------------------------------
@pytest.mark.parametrize("ext,codec,pix_fmt,options", CONTAINERS)
def test_uniform_sampling_in_every_container(tmp_path, ext, codec, pix_fmt, options):
    path = moving_video(tmp_path / f"clip.{ext}", n=20, codec=codec, pix_fmt=pix_fmt, options=options)
    clip = video.load(path, num_frames=5)
    assert clip.indices.tolist() == [2, 6, 10, 14, 18]  # centres of 5 segments of 20 frames
    np.testing.assert_allclose(clip.timestamps, clip.indices / 10, atol=1e-9)
    assert (clip.fps, clip.n_source_frames, clip.source) == (10.0, 20, str(path))
    assert clip.duration == pytest.approx(2.0)
    assert clip.frames.dtype == np.uint8 and clip.frames.shape == (5, 40, 56, 3)
    assert identify(clip.frames) == clip.indices.tolist()
    reference = pyav_frames(path)
    assert len(reference) == 20
    np.testing.assert_array_equal(clip.frames, reference[clip.indices])
    for frame, i in zip(clip.frames, clip.indices):  # the square is where frame i drew it
        column = frame[-8].astype(int).sum(-1)
        assert abs(int(np.argmax(column > 600)) - square_x(i, 56)) <= 1


@pytest.mark.parametrize("ext,codec,pix_fmt,options", CONTAINERS)
def test_explicit_indices_and_all_frames(tmp_path, ext, codec, pix_fmt, options):
    path = moving_video(tmp_path / f"clip.{ext}", n=20, codec=codec, pix_fmt=pix_fmt, options=options)
    reference = pyav_frames(path)
    clip = video.load(path, indices=[19, 0, 7, 7, 12])
    assert clip.indices.tolist() == [19, 0, 7, 7, 12]
    assert identify(clip.frames) == [19, 0, 7, 7, 12]
    np.testing.assert_array_equal(clip.frames, reference[[19, 0, 7, 7, 12]])
    everything = video.load(path)
    np.testing.assert_array_equal(everything.frames, reference)
    assert everything.indices.tolist() == list(range(20))


def test_time_window(tmp_path):
    path = moving_video(tmp_path / "clip.mp4", n=20, options={"g": "6", "bf": "2"})
    clip = video.load(path, num_frames=4, start=0.5, end=1.5)
    in_window = [i for i in range(20) if 0.5 <= i / 10 < 1.5]  # frames 5..14
    assert clip.indices.tolist() == [in_window[(2 * j + 1) * 10 // 8] for j in range(4)] == [6, 8, 11, 13]
    assert identify(clip.frames) == [6, 8, 11, 13]
    assert video.load(path, start=0.5, end=1.5).indices.tolist() == in_window
    assert video.load(path, start=1.7).indices.tolist() == [17, 18, 19]
    assert video.load(path, end=0.25).indices.tolist() == [0, 1, 2]
    assert video.load(path, num_frames=2, start=0, end=2.0).indices.tolist() == [5, 15]


def test_variable_frame_rate(tmp_path):
    pts_ms = [0, 40, 100, 110, 300, 310, 500, 900]
    images = [frame_image(i, 48, 32) for i in range(len(pts_ms))]
    for ext in ("mkv", "mp4"):
        path = write_video(tmp_path / f"vfr.{ext}", images, fps=25, pts=pts_ms)
        clip = video.load(path)
        np.testing.assert_allclose(clip.timestamps, np.array(pts_ms) / 1000, atol=1e-12)
        assert identify(clip.frames) == list(range(8))
        window = video.load(path, start=0.1, end=0.5)  # frames shown at 100, 110, 300, 310 ms
        assert window.indices.tolist() == [2, 3, 4, 5]
        assert identify(video.load(path, indices=[7, 2]).frames) == [7, 2]


@pytest.mark.parametrize("name,codec,fps", [
    ("raw.h264", "libx264", 25),  # an elementary stream: no pts at all, FFmpeg assumes 25 fps; frames are counted
    ("clip.ts", "libx264", 10),  # MPEG-TS: the first frame is at 0.2 s on the stream clock
    ("clip.mpg", "mpeg2video", 10),  # MPEG-PS: decoded pts differ from packet pts; frames are counted
])
def test_streams_without_a_usable_packet_table(tmp_path, name, codec, fps):
    path = moving_video(tmp_path / name, n=20, codec=codec, options={"g": "6", "bf": "2"})
    clip = video.load(path, num_frames=5)
    assert clip.indices.tolist() == [2, 6, 10, 14, 18] and identify(clip.frames) == [2, 6, 10, 14, 18]
    np.testing.assert_allclose(clip.timestamps, clip.indices / fps, atol=1e-9)
    np.testing.assert_array_equal(clip.frames, pyav_frames(path)[clip.indices])
    assert identify(video.load(path, indices=[19, 3]).frames) == [19, 3]


def test_video_with_an_audio_track(tmp_path):
    path = tmp_path / "with_audio.mp4"
    with av.open(str(path), "w") as container:
        vstream = container.add_stream("libx264", rate=10)
        vstream.width, vstream.height, vstream.pix_fmt = 56, 40, "yuv420p"
        astream = container.add_stream("aac", rate=16000)
        for i in range(20):
            container.mux(vstream.encode(av.VideoFrame.from_ndarray(frame_image(i, 40, 56), format="rgb24")))
            for j in range(2):
                audio = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
                audio.sample_rate, audio.pts = 16000, (2 * i + j) * 1024
                container.mux(astream.encode(audio))
        container.mux(vstream.encode(None))
        container.mux(astream.encode(None))
    clip = video.load(path, num_frames=5)
    assert clip.indices.tolist() == identify(clip.frames) == [2, 6, 10, 14, 18]
    assert clip.duration == pytest.approx(2.0)


def test_short_clip_repeats_frames_evenly_with_warning(tmp_path):
    path = moving_video(tmp_path / "short.mp4", n=3)
    with pytest.warns(UserWarning, match="repeating frames evenly"):
        clip = video.load(path, num_frames=8)
    assert clip.indices.tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert identify(clip.frames) == [0, 0, 0, 1, 1, 2, 2, 2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        video.load(path, num_frames=3)  # enough frames: no warning


def test_uniform_indices_policy():
    for m in range(1, 40):
        for k in range(1, 40):
            idx = video.uniform_indices(m, k)
            assert len(idx) == k and idx.min() >= 0 and idx.max() < m
            assert np.all(np.diff(idx) >= 0)
            if m >= k:
                assert len(set(idx.tolist())) == k  # distinct frames whenever there are enough
            else:
                counts = np.bincount(idx, minlength=m)
                assert counts.min() >= k // m and counts.max() <= -(-k // m)  # repeated evenly
    assert video.uniform_indices(7, 7).tolist() == list(range(7))


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
@pytest.mark.parametrize("rotation,hflip,vflip,expected", [
    (90, False, False, lambda a: np.rot90(a, 1)),  # PyAV: degrees counter-clockwise, then flips
    (-90, False, False, lambda a: np.rot90(a, -1)),
    (180, False, False, lambda a: np.rot90(a, 2)),
    (90, True, False, lambda a: np.fliplr(np.rot90(a, 1))),
    (0, True, False, np.fliplr),
    (0, False, True, np.flipud),
])
def test_rotation_metadata_is_applied(tmp_path, ext, rotation, hflip, vflip, expected):
    img = np.zeros((32, 48, 3), np.uint8)
    img[:16, :16] = (255, 0, 0)
    img[:16, 32:] = (0, 255, 0)
    img[16:, 32:] = (0, 0, 255)
    path = write_video(tmp_path / f"rot.{ext}", [img] * 3, pix_fmt="yuv444p", options={"crf": "0"},
                       rotation=rotation, hflip=hflip, vflip=vflip)
    frames = video.load(path).frames
    want = expected(img)
    assert frames.shape == (3,) + want.shape
    assert np.abs(frames.astype(int) - want).max() <= 8


@pytest.mark.parametrize("ext,codec", [("mkv", "ffv1"), ("mov", "png"), ("avi", "ffv1")])
def test_grey_source_becomes_rgb(tmp_path, ext, codec):
    levels = [0, 16, 128, 235, 255]
    path = write_video(tmp_path / f"grey.{ext}", [np.full((16, 24), v, np.uint8) for v in levels],
                       codec=codec, pix_fmt="gray")
    frames = video.load(path).frames
    assert frames.shape == (5, 16, 24, 3)
    np.testing.assert_array_equal(frames, np.broadcast_to(np.array(levels, np.uint8)[:, None, None, None],
                                                          frames.shape))


@pytest.mark.parametrize("codec,pix_fmt", [("png", "rgba"), ("qtrle", "argb")])
def test_alpha_source_drops_alpha(tmp_path, codec, pix_fmt):
    images = np.zeros((3, 16, 24, 4), np.uint8)
    for i, alpha in enumerate((0, 128, 255)):
        images[i] = (200, 50 + i, 10, alpha)
    frames = video.load(write_video(tmp_path / "alpha.mov", images, codec=codec, pix_fmt=pix_fmt)).frames
    np.testing.assert_array_equal(frames, images[..., :3])  # colour kept as stored, not composited


@pytest.mark.parametrize("h,w", [(37, 23), (23, 37), (2, 2), (1, 5)])
def test_odd_portrait_and_tiny_sizes_are_exact_when_lossless(tmp_path, h, w):
    images = np.random.default_rng(h * w).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    path = write_video(tmp_path / "odd.mkv", images, codec="ffv1", pix_fmt="bgr0")
    np.testing.assert_array_equal(video.load(path).frames, images)
    np.testing.assert_array_equal(video.load(path, indices=[3, 1]).frames, images[[3, 1]])


SEEK_FILES = [
    pytest.param("mp4", "libx264", {"g": "24", "bf": "3"}, id="mp4"),
    pytest.param("mkv", "libx264", {"bf": "3", "x264-params": "keyint=24:min-keyint=24:scenecut=0:open-gop=1"},
                 id="mkv-opengop"),
    pytest.param("webm", "libvpx-vp9", {"g": "24"}, id="webm",
                 marks=pytest.mark.skipif(not HAS_VP9, reason="no VP9 encoder")),
    pytest.param("avi", "mpeg4", {"g": "24", "bf": "2"}, id="avi"),
]


@pytest.mark.parametrize("ext,codec,options", SEEK_FILES)
def test_seeking_gives_the_frames_of_a_sequential_decode(tmp_path, caplog, ext, codec, options):
    n = 240
    path = moving_video(tmp_path / f"long.{ext}", n=n, h=32, w=48, fps=24, codec=codec, options=options)
    reference = pyav_frames(path)
    rng = np.random.default_rng(0)
    requests = [rng.choice(n, size=6) for _ in range(4)] + [[239, 0, 120, 119, 121], [5]]
    with caplog.at_level(logging.DEBUG, logger="vivit_lens.video"):
        for idx in requests:
            np.testing.assert_array_equal(video.load(path, indices=idx).frames, reference[idx])
        clip = video.load(path, num_frames=4)
    np.testing.assert_array_equal(clip.frames, reference[clip.indices])
    decoded = [int(m) for m in re.findall(r"decoded (\d+) frames", caplog.text)]
    assert len(decoded) == len(requests) + 1
    assert max(decoded) < n // 2, f"seeking should skip most of the file, decoded {decoded}"


def test_index_cache_follows_file_changes(tmp_path):
    path = moving_video(tmp_path / "clip.mp4", n=10)
    assert video.load(path).n_source_frames == 10
    moving_video(path, n=14)
    assert video.load(path).n_source_frames == 14


# Errors -----------------------------------------------------------------------------------------
def _truncated(tmp_path, ext, codec, fraction=0.5):
    path = moving_video(tmp_path / f"whole.{ext}", n=60, codec=codec, options={"g": "10"})
    data = path.read_bytes()
    cut = tmp_path / f"cut.{ext}"
    cut.write_bytes(data[:int(len(data) * fraction)])
    return cut


@pytest.mark.parametrize("ext,codec", [
    ("mp4", "libx264"), ("avi", "mpeg4"),
    pytest.param("webm", "libvpx-vp9", marks=pytest.mark.skipif(not HAS_VP9, reason="no VP9 encoder")),
    ("mkv", "libx264"),
])
def test_truncated_files_raise(tmp_path, ext, codec):
    cut = _truncated(tmp_path, ext, codec)
    with pytest.raises(video.CorruptVideoError, match=re.escape(str(cut))):
        video.load(cut, num_frames=4)


@pytest.mark.parametrize("fraction", [0.3, 0.95])
def test_truncated_faststart_mp4_raises(tmp_path, fraction):
    # save() puts the index (moov) first, so a cut file still opens: the missing frames must be noticed
    path = video.save(np.stack([frame_image(i, 48, 64) for i in range(60)]), tmp_path / "whole.mp4", fps=10)
    data = path.read_bytes()
    assert data.find(b"moov") < data.find(b"mdat")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(video.CorruptVideoError, match="cut.mp4"):
        video.load(cut, num_frames=4)


def test_damaged_middle_raises(tmp_path):
    path = moving_video(tmp_path / "clip.mkv", n=60, options={"g": "10"})
    data = bytearray(path.read_bytes())
    third = len(data) // 3
    data[third:third + 400] = np.random.default_rng(1).integers(0, 256, 400, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.mkv"
    bad.write_bytes(bytes(data))
    with pytest.raises(video.CorruptVideoError, match="damaged.mkv"):
        video.load(bad)


def _audio_file(path, codec):
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=16000)
        planar = codec != "pcm_s16le"
        for i in range(10):
            samples = np.zeros((1, 1024), np.float32 if planar else np.int16)
            frame = av.AudioFrame.from_ndarray(samples, format="fltp" if planar else "s16", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def _file(path, data):
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("make,error", [
    (lambda d: d / "missing.mp4", video.VideoNotFoundError),
    (lambda d: d, video.VideoError),
    (lambda d: _file(d / "empty.mp4", b""), video.CorruptVideoError),
    (lambda d: _file(d / "notes.mp4", b"not a video\n" * 50), video.CorruptVideoError),
    (lambda d: _file(d / "noise.avi", np.random.default_rng(0).bytes(4096)), video.CorruptVideoError),
    (lambda d: _audio_file(d / "speech.wav", "pcm_s16le"), video.NoVideoStreamError),
    (lambda d: _audio_file(d / "speech.m4a", "aac"), video.NoVideoStreamError),
])
def test_unreadable_inputs_raise_clear_errors(tmp_path, make, error):
    path = make(tmp_path)
    with pytest.raises(error, match=re.escape(str(path))) as info:
        video.load(path, num_frames=4)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs,message", [
    (dict(indices=[0, 20]), r"indices \[20\] are out of range"),
    (dict(indices=[-1]), "out of range"),
    (dict(start=2.0), "start is at or after the end"),
    (dict(start=5.0, end=6.0), "start is at or after the end"),
    (dict(start=1.0, end=1.0), "end is not after start"),
    (dict(start=1.5, end=0.5), "end is not after start"),
    (dict(end=3.0), "end is after the end of the video"),
    (dict(start=-0.5), "start is negative"),
])
def test_impossible_requests_raise_frame_range_errors(tmp_path, kwargs, message):
    path = moving_video(tmp_path / "clip.mp4", n=20)
    with pytest.raises(video.FrameRangeError, match=message) as info:
        video.load(path, **kwargs)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("kwargs", [
    dict(num_frames=0), dict(num_frames=2.5), dict(num_frames=4, indices=[1]), dict(indices=[1], start=0.1),
    dict(indices=[]), dict(indices=[0.5]), dict(start=float("nan")),
])
def test_bad_arguments_raise_value_errors(tmp_path, kwargs):
    path = moving_video(tmp_path / "clip.mp4", n=5)
    # wrong types are ValueErrors too; under the test suite's runtime type checker they are TypeErrors first
    with pytest.raises((ValueError, TypeError)):
        video.load(path, **kwargs)


# Preprocessing ----------------------------------------------------------------------------------
HF_CONFIGS = {
    "default": {},
    "imagenet": dict(size={"shortest_edge": 40}, crop_size={"height": 32, "width": 24}, resample=3,
                     rescale_factor=1 / 255, offset=False, image_mean=[0.485, 0.456, 0.406],
                     image_std=[0.229, 0.224, 0.225]),
    "pad": dict(size={"shortest_edge": 20}, crop_size={"height": 30, "width": 26}, resample=0),
    "no-resize": dict(do_resize=False, crop_size={"height": 50, "width": 40}),
    "no-crop-no-norm": dict(do_center_crop=False, size={"shortest_edge": 17}, do_normalize=False),
    "no-rescale": dict(do_rescale=False, offset=False, resample=1),
    # shortest edge 48: frames of 48 x w are not resized at all (PIL's same-size resize is a copy), others are
    "same-size": dict(size={"shortest_edge": 48}, crop_size={"height": 48, "width": 40}),
}


@pytest.mark.parametrize("name", list(HF_CONFIGS))
@pytest.mark.parametrize("h,w", [(48, 64), (37, 53), (64, 36), (240, 320), (256, 256), (100, 300), (31, 31), (48, 48)])
def test_preprocess_matches_vivit_image_processor(name, h, w):
    hf_kwargs = HF_CONFIGS[name]
    frames = np.random.default_rng(h * 1000 + w).integers(0, 256, (4, h, w, 3), dtype=np.uint8)
    reference = VivitImageProcessor(**hf_kwargs)(list(frames), return_tensors="pt").pixel_values
    ours = video.preprocess(frames, ProcessorConfig.from_hf_dict(hf_kwargs))
    assert ours.dtype == torch.float32 and ours.shape == reference.shape
    diff = (ours - reference).abs().max().item()
    assert diff <= 1e-5, f"max abs difference {diff}"


def test_resize_output_size_matches_transformers():
    for h, w in [(240, 320), (320, 240), (37, 53), (720, 1280), (1080, 1920), (257, 256), (99, 1000)]:
        for edge in (224, 256, 17):
            expected = get_resize_output_image_size(np.zeros((h, w, 3)), edge, default_to_square=False)
            assert video.resize_output_size(h, w, edge) == tuple(expected)
    assert video.resize_output_size(240, 320, 256) == (256, 341)


def test_preprocess_end_to_end_on_a_decoded_clip(tmp_path):
    images = [frame_image(i, 240, 320) for i in range(8)]
    images[0][:] = 0
    images[1][:] = 255
    clip = video.load(write_video(tmp_path / "clip.mp4", images), num_frames=8)
    pixels = video.preprocess(clip)
    reference = VivitImageProcessor()(list(clip.frames), return_tensors="pt").pixel_values
    assert pixels.shape == (1, 8, 3, 224, 224)
    assert (pixels - reference).abs().max().item() <= 1e-5
    assert pixels[0, 0].max().item() < -2.9 and pixels[0, 1].min().item() > 0.9  # black -> -3, white -> 1


def test_preprocess_input_forms_agree():
    frames = np.random.default_rng(0).integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    processor = ProcessorConfig(shortest_edge=24, crop_size=(16, 16))
    clip = video.Clip(frames, np.arange(3), np.arange(3) / 10, 10.0, "x.mp4", 3, 0.3)
    single = video.preprocess(frames, processor)
    assert single.shape == (1, 3, 3, 16, 16)
    for same in (clip, torch.from_numpy(frames), list(frames)):
        torch.testing.assert_close(video.preprocess(same, processor), single, rtol=0, atol=0)
    other = frames[::-1].copy()
    batch = video.preprocess([clip, other], processor)
    assert batch.shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(batch[1:], video.preprocess(other, processor), rtol=0, atol=0)
    torch.testing.assert_close(video.preprocess(np.stack([frames, other]), processor), batch, rtol=0, atol=0)
    torch.testing.assert_close(video.preprocess(frames, None), video.preprocess(frames, ProcessorConfig()))


@pytest.mark.parametrize("bad", [
    np.zeros((2, 8, 8, 3), np.float32), np.zeros((2, 8, 8, 4), np.uint8), np.zeros((8, 8, 3), np.uint8),
    [np.zeros((2, 8, 8, 3), np.uint8), np.zeros((3, 8, 8, 3), np.uint8)], [],
])
def test_preprocess_rejects_bad_input(bad):
    with pytest.raises(ValueError):
        video.preprocess(bad)


def test_load_processor(tmp_path):
    assert video.load_processor(tmp_path) == ProcessorConfig()
    d = {"image_processor_type": "VivitImageProcessor", "size": {"shortest_edge": 128},
         "crop_size": {"height": 112, "width": 112}, "image_mean": [0.45, 0.45, 0.45], "offset": False,
         "rescale_factor": 1 / 255}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(d))
    loaded = video.load_processor(tmp_path)
    assert (loaded.shortest_edge, loaded.crop_size, loaded.image_mean, loaded.offset) == \
        (128, (112, 112), (0.45, 0.45, 0.45), False)
    assert video.load_processor(tmp_path / "preprocessor_config.json") == loaded
    frames = np.random.default_rng(0).integers(0, 256, (2, 120, 160, 3), dtype=np.uint8)
    reference = VivitImageProcessor(**d)(list(frames), return_tensors="pt").pixel_values
    assert (video.preprocess(frames, loaded) - reference).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="no such model folder"):
        video.load_processor(tmp_path / "nowhere")


# Writing ----------------------------------------------------------------------------------------
def test_save_round_trip(tmp_path):
    frames = np.stack([frame_image(i, 48, 64) for i in range(12)])
    path = video.save(frames, tmp_path / "out.mp4", fps=12)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert (stream.codec_context.name, stream.format.name) == ("h264", "yuv420p")
    clip = video.load(path)
    assert clip.frames.shape == frames.shape and clip.fps == 12
    assert identify(clip.frames) == list(range(12))
    assert np.abs(clip.frames.astype(int) - frames).mean() < 2


def test_save_pads_odd_sizes_and_keeps_fractional_fps(tmp_path):
    y, x = np.mgrid[:33, :47]
    image = np.stack([y * 7, x * 5, (x + y) * 3], axis=-1).astype(np.uint8)  # smooth: codes well
    frames = np.stack([image] * 5)
    with pytest.warns(UserWarning, match="padding 33x47 to 34x48"):
        path = video.save(frames, tmp_path / "odd.mp4", fps=30000 / 1001)
    clip = video.load(path)
    assert clip.frames.shape == (5, 34, 48, 3) and clip.fps == pytest.approx(29.97, abs=1e-3)
    assert np.abs(clip.frames[:, :33, :47].astype(int) - frames).mean() < 3
    np.testing.assert_allclose(clip.frames[:, 33].astype(float), clip.frames[:, 32], atol=12)  # edge replicated
    np.testing.assert_allclose(clip.frames[:, :, 47].astype(float), clip.frames[:, :, 46], atol=12)


@pytest.mark.parametrize("h,w", [(33, 47), (64, 48)])
def test_save_lossless_round_trip_is_exact(tmp_path, h, w):
    frames = np.random.default_rng(h).integers(0, 256, (6, h, w, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no padding
        path = video.save(frames, tmp_path / "exact.mp4", fps=8, lossless=True)
    np.testing.assert_array_equal(video.load(path).frames, frames)
    np.testing.assert_array_equal(pyav_frames(path), frames)


@pytest.mark.parametrize("frames,path,fps", [
    (np.zeros((2, 8, 8, 3), np.float32), "a.mp4", 10),
    (np.zeros((2, 8, 8, 3), np.uint8), "a.gif", 10),
    (np.zeros((2, 8, 8, 3), np.uint8), "a.mp4", 0),
])
def test_save_rejects_bad_arguments(tmp_path, frames, path, fps):
    with pytest.raises(ValueError):
        video.save(frames, tmp_path / path, fps)
    assert not (tmp_path / path).exists()
