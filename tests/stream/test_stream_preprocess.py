"""The pipeline's preprocessing of decoded video (FFmpeg's swscale scales the YUV frame straight
to the model's size) against the reference path (full-size RGB, then PIL, as calibration and
evaluation do), on the conveyor clip: the same geometry, the same grey padding, pixels within
a grey level or two, and the detector finds the same boards."""

from __future__ import annotations

import av
import numpy as np
import pytest
from PIL import Image
from stream_testkit import iou

from agent.engines import build_engine
from agent.model_spec import resolve_model
from agent.preprocess import Preprocessor
from agent.stream.infer import Inference, _active_model, model_input
from agent.stream.metrics import StageTimes
from agent.stream.muxer import Frame
from agent.stream.spec import Postprocess


def _frames(video, count: int = 6) -> list[av.VideoFrame]:
    with av.open(str(video)) as container:
        return [f for _, f in zip(range(count), container.decode(video=0), strict=False)]


@pytest.mark.parametrize("mode", ["stretch", "letterbox", "center_crop"])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest"])
def test_swscale_gives_the_reference_tensor_within_a_grey_level_or_two(clip, mode, interpolation) -> None:
    video, _ = clip
    bytes_pre = Preprocessor(height=96, width=160, layout="NHWC", dtype="uint8", scale=1.0,
                             resize_mode=mode, interpolation=interpolation)  # fmt: skip
    diffs = []
    for vf in _frames(video):
        fast = model_input(vf, bytes_pre)
        ref = bytes_pre(Image.fromarray(vf.to_ndarray(format="rgb24")))
        assert fast.shape == ref.shape == (96, 160, 3) and fast.dtype == np.uint8
        diffs.append(np.abs(fast.astype(np.int16) - ref.astype(np.int16)))
    d = np.stack(diffs)
    assert d.mean() <= 2.5, d.mean()  # measured: 1.1-1.7 (resampler and chroma upsampling differ)
    assert np.percentile(d, 99) <= 8, np.percentile(d, 99)  # measured: 3-6; the rest is edges


def test_letterbox_bars_and_the_normalised_tensor_match_the_reference(clip) -> None:
    video, _ = clip
    pre = Preprocessor(height=128, width=128, resize_mode="letterbox", mean=(0.485, 0.456, 0.406),
                       std=(0.229, 0.224, 0.225))  # fmt: skip
    nw, nh, left, top = pre.geometry(320, 192)
    assert (nw, nh, left, top) == (128, 77, 0, 25)
    for vf in _frames(video, 3):
        fast = model_input(vf, pre)
        ref = pre(Image.fromarray(vf.to_ndarray(format="rgb24")))
        assert fast.shape == ref.shape == (3, 128, 128) and fast.dtype == np.float32
        grey = pre.normalize(np.full((1, 1, 3), 114, np.uint8))[:, 0, 0]
        for bars in (fast[:, :top], fast[:, top + nh :]):  # the padding is exactly the reference's
            np.testing.assert_array_equal(bars, np.broadcast_to(grey[:, None, None], bars.shape))
        assert np.abs(fast - ref).mean() < 2.5 / 255 / 0.224  # about 2 grey levels


def test_the_detector_finds_the_same_boards_on_both_paths(clip, detector, profile, cache) -> None:
    video, _ = clip
    resolved = resolve_model(detector)
    built = build_engine(resolved, profile=profile, cache=cache, threads=1)
    model = _active_model("lanes:1", built.engine, resolved.manifest)
    infer = Inference(Postprocess(), StageTimes())
    matched = total = 0
    for i, vf in enumerate(_frames(video, 30)):
        fast = Frame("cam", i, None, 0.0, vf)
        ref = Frame("cam", i, None, 0.0, vf.to_ndarray(format="rgb24"))  # an array: the PIL path
        (a,), (b,) = infer(model, [fast]), infer(model, [ref])
        total += max(len(a.scores), len(b.scores))
        matched += sum(1 for box in a.boxes if any(iou(box, other) >= 0.8 for other in b.boxes))
    assert total > 0
    assert matched >= 0.95 * total, (matched, total)


def test_the_drawing_canvas_has_the_frames_own_rgb_pixels(clip) -> None:
    """``Frame.canvas()`` (swscale to RGBX, for drawing) holds exactly the pixels of
    ``Frame.image`` (swscale to RGB), is a fresh image each time, and drawing on it leaves the
    frame alone."""
    from agent.stream.annotate import annotate
    from agent.stream.infer import Detections

    video, _ = clip
    with av.open(str(video)) as container:
        decoded = next(container.decode(video=0))
    frame = Frame("belt", 0, None, 0.0, decoded)
    canvas = frame.canvas()
    assert canvas.size == (frame.width, frame.height)
    assert np.array_equal(np.asarray(canvas)[..., :3], Frame("belt", 0, None, 0.0, decoded).image)
    det = Detections(np.array([[10.0, 10.0, 60.0, 50.0]], np.float32), np.array([0.9], np.float32),
                     np.array([0]), ["board"])  # fmt: skip
    drawn = annotate(canvas, det, "caption")
    assert drawn is canvas and not np.array_equal(np.asarray(drawn)[..., :3], frame.image)
    assert np.array_equal(np.asarray(frame.canvas())[..., :3], frame.image)  # a new canvas, undrawn
    folder_frame = Frame("dir", 0, None, 0.0, frame.image.copy())  # an image folder's RGB array
    assert np.array_equal(np.asarray(folder_frame.canvas())[..., :3], frame.image)
