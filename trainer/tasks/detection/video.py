"""A synthetic conveyor clip: PCB boards (``synth.render``) riding a belt through the frame, with
per-frame ground truth (boxes, labels, identities) beside it, so the video pipeline's detections
and track identities can be scored.

The belt runs left to right in ``lanes`` horizontal lanes (as many as fit boards of 80 % of a
lane's height); on a lane the boards follow each other a frame width apart, so at most one board
per lane is in view and each board enters, crosses and leaves. The belt is light grey with
darker slats moving with it; boards are dark solder mask with copper, so "not belt" is a simple
cue a test-made detector can use. Ground truth (``OUT.gt.json``): for every frame, every visible
board (label ``board``, id = board number) and each of its defects (label = defect class, id =
1000 x board + k), boxes ``[x0, y0, x1, y1]`` in pixels clipped to the frame. H.264 in mp4,
encoded single-threaded with fixed settings: the same seed and settings give the same bytes.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np

from trainer.tasks.detection.synth import CLASSES, render

BELT = 172
SLAT = 150


def _board(seed: int, board_id: int, size: int) -> tuple[np.ndarray, list[tuple[int, list[float]]]]:
    image, defects = render(np.random.default_rng([seed, 7919, board_id]), size)
    return np.asarray(image), defects


def _clip(box: list[float], w: int, h: int) -> list[float] | None:
    x0, y0, x1, y1 = max(0.0, box[0]), max(0.0, box[1]), min(float(w), box[2]), min(float(h), box[3])
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return [round(x0, 1), round(y0, 1), round(x1, 1), round(y1, 1)]


def conveyor_frames(seconds: float, fps: float, width: int, height: int, seed: int = 0):
    """Yield (frame RGB uint8 [H, W, 3], ground-truth objects) for each frame."""
    lanes = max(1, height // 96)
    lane_h = height / lanes
    size = max(32, int(lane_h * 0.8)) // 2 * 2
    speed = max(2.0, (width + size) / (2.5 * fps))  # a board crosses in about 2.5 s
    period = width + size  # pixels between boards on a lane
    rng = np.random.default_rng([seed, 1])
    phase = rng.uniform(0, period, lanes)
    boards: dict[int, tuple[np.ndarray, list]] = {}
    n = int(round(seconds * fps))
    ys = np.arange(height)[:, None]
    for i in range(n):
        travel = i * speed
        xs = np.arange(width)[None, :]
        slats = ((xs - travel) % 40) < 6
        frame = np.where(slats, SLAT, BELT).astype(np.uint8).repeat(height, 0)[..., None].repeat(3, 2)
        frame = frame + (ys % 2 == 0).astype(np.uint8)[..., None]  # a faint belt weave
        objects = []
        for lane in range(lanes):
            y0 = int(lane * lane_h + (lane_h - size) / 2)
            # the board whose left edge is at x = travel + phase - k * period - size, for k = 0, 1, ...
            lead = travel + phase[lane] - size
            k_first = int(np.floor(lead / period))
            for k in range(k_first - 1, k_first + 1):
                x0 = lead - k * period
                if x0 >= width or x0 + size <= 0 or k < 0:
                    continue
                board_id = 1 + k * lanes + lane
                if board_id not in boards:
                    boards[board_id] = _board(seed, board_id, size)
                image, defects = boards[board_id]
                xi = int(round(x0))
                a, b = max(0, xi), min(width, xi + size)
                if b <= a:
                    continue
                frame[y0 : y0 + size, a:b] = image[:, a - xi : b - xi]
                box = _clip([xi, y0, xi + size, y0 + size], width, height)
                if box:
                    objects.append({"id": board_id, "label": "board", "box": box})
                for j, (cls, (dx, dy, dw, dh)) in enumerate(defects):
                    dbox = _clip([xi + dx, y0 + dy, xi + dx + dw, y0 + dy + dh], width, height)
                    if dbox:
                        objects.append({"id": 1000 * board_id + j, "label": CLASSES[cls], "box": dbox})
        yield frame, objects


def parse_size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must be WIDTHxHEIGHT, got {text!r}") from None
    if w < 64 or h < 64 or w % 2 or h % 2:
        raise ValueError(f"--size {text}: at least 64x64 and even (H.264 4:2:0)")
    return w, h


def synthesize_video(
    out: str | Path,
    seconds: float = 10.0,
    fps: float = 30.0,
    size: tuple[int, int] = (640, 360),
    seed: int = 0,
) -> dict:
    """Write the clip to ``out`` (mp4, H.264) and its ground truth to ``out`` with ``.gt.json``."""
    import av

    if seconds <= 0 or fps <= 0:
        raise ValueError("--seconds and --fps must be positive")
    width, height = size
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    frames_gt = []
    ids: set[int] = set()
    with av.open(str(out), "w", format="mp4", container_options={"fflags": "+bitexact"}) as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {
            "preset": "veryfast",
            "crf": "20",
            "threads": "1",
            "g": str(int(round(fps))),
            "flags": "+bitexact",
        }
        for i, (frame, objects) in enumerate(conveyor_frames(seconds, fps, width, height, seed)):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts = i
            vf.time_base = 1 / rate
            for packet in stream.encode(vf):
                container.mux(packet)
            frames_gt.append({"frame": i, "objects": objects})
            ids.update(o["id"] for o in objects if o["label"] == "board")
        for packet in stream.encode():
            container.mux(packet)
    gt = {
        "clip": out.name,
        "seed": seed,
        "fps": float(fps),
        "width": width,
        "height": height,
        "labels": ["board", *CLASSES],
        "frames": frames_gt,
    }
    gt_path = out.with_suffix(".gt.json")
    gt_path.write_text(json.dumps(gt, separators=(",", ":")), encoding="utf-8")
    return {"video": str(out), "ground_truth": str(gt_path), "frames": len(frames_gt), "boards": len(ids),
            "fps": float(fps), "size": f"{width}x{height}"}  # fmt: skip
