"""Procedural printed-circuit-board inspection images (ImageFolder layout) for the classification task.

Each image is a close-up of a board: solder-mask colour, copper traces, pads, and a few parts
(ICs with pins, two-pad passives). The ``ok`` class is a correctly assembled board; the defect
classes change one thing:

- ``missing_component``: a part is absent, its bare pads remain;
- ``shifted_component``: a part sits off its pads (shifted and slightly rotated);
- ``solder_bridge``: a blob of solder joins two neighbouring pins or pads;
- ``open_trace``: a trace is cut;
- ``foreign_object``: debris (a fibre or a chip of material) lies on the board.

Nuisance variation a model must ignore: board colour, layout, part sizes, lighting gradient and
brightness, rotation, sensor noise and blur. Every image draws from its own RNG seeded with
``(seed, split, class, index)``, so the same seed gives byte-identical files and images do not
depend on how many others are drawn. Drawing is at 2x the output size, then downsampled.

``difficulty="easy"`` keeps the classes and the layout but draws the defects larger and the
camera kinder (less rotation, noise and lighting change, no blur): a set a small CNN learns to
high accuracy from scratch in minutes on a CPU, which the demo needs to make a 1-point accuracy
budget measurable. ``standard`` (the default) is the harder set; its files never change.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

CLASSES = ["ok", "missing_component", "shifted_component", "solder_bridge", "open_trace", "foreign_object"]
SPLITS = {"train": 0.7, "val": 0.15, "test": 0.15}

BOARD_COLOURS = [
    (20, 90, 40),
    (10, 60, 30),
    (25, 50, 110),
    (20, 20, 25),
    (120, 25, 25),
    (200, 200, 190),
    (60, 30, 80),
]
COPPER = [(200, 150, 60), (210, 170, 90), (180, 130, 50)]
SOLDER = (205, 205, 210)


@dataclass(frozen=True)
class Difficulty:
    """Sizes of the defects and strength of the camera nuisances (the RNG draws stay the same)."""

    trace_width_div: int = 40  # trace width = r // this
    gap_div: int = 14  # open-trace gap = r // this
    shift_scale: float = 1.0  # shifted component offset multiplier
    bridge_scale: float = 1.0  # solder-bridge blob height multiplier
    debris_scale: float = 1.0  # foreign object size multiplier
    rotation_deg: float = 15.0
    blur_prob: float = 0.3
    noise_scale: float = 1.0
    light_scale: float = 1.0  # lighting gradient and brightness spread multiplier


DIFFICULTIES = {
    "standard": Difficulty(),
    "easy": Difficulty(
        trace_width_div=20,
        gap_div=6,
        shift_scale=1.4,
        bridge_scale=1.5,
        debris_scale=1.6,
        rotation_deg=4.0,
        blur_prob=0.0,
        noise_scale=0.4,
        light_scale=0.4,
    ),
}


def _jitter(rng: np.random.Generator, colour: tuple[int, int, int], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _part(rng: np.random.Generator, r: int, slot: tuple[int, int, int, int]) -> dict:
    """A part placed inside ``slot`` (x0, y0, x1, y1): an IC or a two-pad passive."""
    x0, y0, x1, y1 = slot
    w, h = x1 - x0, y1 - y0
    kind = "ic" if rng.random() < 0.5 else "passive"
    if kind == "ic":
        bw, bh = int(w * rng.uniform(0.45, 0.65)), int(h * rng.uniform(0.35, 0.55))
        pins = int(rng.integers(3, 6))
    else:
        bw, bh = int(w * rng.uniform(0.35, 0.55)), int(h * rng.uniform(0.2, 0.3))
        pins = 1
    cx = x0 + w // 2 + int(rng.integers(-w // 10, w // 10 + 1))
    cy = y0 + h // 2 + int(rng.integers(-h // 10, h // 10 + 1))
    body = (cx - bw // 2, cy - bh // 2, cx + bw // 2, cy + bh // 2)
    pads = []
    if kind == "ic":
        pitch = bw / pins
        pw, ph = max(2, int(pitch * 0.5)), max(3, int(bh * 0.35))
        for i in range(pins):
            px = int(body[0] + pitch * (i + 0.5))
            pads.append((px - pw // 2, body[1] - ph, px + pw // 2, body[1] + ph // 3))
            pads.append((px - pw // 2, body[3] - ph // 3, px + pw // 2, body[3] + ph))
    else:
        pw = max(3, int(bw * 0.3))
        pads.append((body[0] - pw // 2, body[1] - 1, body[0] + pw // 2, body[3] + 1))
        pads.append((body[2] - pw // 2, body[1] - 1, body[2] + pw // 2, body[3] + 1))
    colour = (
        (25, 25, 28)
        if kind == "ic"
        else tuple(int(c) for c in rng.choice([(190, 160, 110), (60, 60, 60), (150, 110, 60)]))
    )
    return {"kind": kind, "body": body, "pads": pads, "colour": colour, "center": (cx, cy)}


def _draw_body(draw: ImageDraw.ImageDraw, part: dict, dx: int = 0, dy: int = 0, angle: float = 0.0) -> None:
    x0, y0, x1, y1 = part["body"]
    cx, cy = (x0 + x1) / 2 + dx, (y0 + y1) / 2 + dy
    hw, hh = (x1 - x0) / 2, (y1 - y0) / 2
    ca, sa = math.cos(angle), math.sin(angle)
    pts = [
        (cx + ca * px - sa * py, cy + sa * px + ca * py)
        for px, py in [(-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh)]
    ]
    draw.polygon(pts, fill=part["colour"])
    if part["kind"] == "ic":  # pin-1 dot
        draw.ellipse((pts[0][0] + 2, pts[0][1] + 2, pts[0][0] + 5, pts[0][1] + 5), fill=(150, 150, 150))


def render(cls: str, rng: np.random.Generator, size: int, difficulty: str = "standard") -> Image.Image:
    d = DIFFICULTIES[difficulty]
    r = max(64, size * 2)
    board = _jitter(rng, BOARD_COLOURS[int(rng.integers(len(BOARD_COLOURS)))], 15)
    img = Image.new("RGB", (r, r), board)
    draw = ImageDraw.Draw(img)
    copper = _jitter(rng, COPPER[int(rng.integers(len(COPPER)))], 10)
    tw = max(2, r // d.trace_width_div)

    # traces: a few straight runs with vias
    traces = []
    for _ in range(int(rng.integers(3, 6))):
        if rng.random() < 0.5:
            y = int(rng.integers(r // 10, r - r // 10))
            seg = (int(rng.integers(0, r // 3)), y, int(rng.integers(2 * r // 3, r)), y)
        else:
            x = int(rng.integers(r // 10, r - r // 10))
            seg = (x, int(rng.integers(0, r // 3)), x, int(rng.integers(2 * r // 3, r)))
        traces.append(seg)
        draw.line(seg, fill=copper, width=tw)
        for px, py in (seg[:2], seg[2:]):
            draw.ellipse((px - tw * 1.5, py - tw * 1.5, px + tw * 1.5, py + tw * 1.5), fill=copper)
            draw.ellipse((px - tw * 0.6, py - tw * 0.6, px + tw * 0.6, py + tw * 0.6), fill=(30, 30, 30))

    # parts on a 2x2 grid of slots (2 to 4 of them)
    half = r // 2
    slots = [(0, 0, half, half), (half, 0, r, half), (0, half, half, r), (half, half, r, r)]
    order = rng.permutation(4)[: int(rng.integers(2, 5))]
    parts = [_part(rng, r, slots[i]) for i in order]
    target = int(rng.integers(len(parts)))

    for i, part in enumerate(parts):
        for pad in part["pads"]:
            draw.rectangle(pad, fill=SOLDER)
        if cls == "missing_component" and i == target:
            continue
        if cls == "shifted_component" and i == target:
            bw = part["body"][2] - part["body"][0]
            sign = rng.choice([-1, 1], size=2)
            dx = int(sign[0] * bw * rng.uniform(0.35, 0.6) * d.shift_scale)
            dy = int(sign[1] * bw * rng.uniform(0.0, 0.3) * d.shift_scale)
            _draw_body(draw, part, dx, dy, float(rng.uniform(0.2, 0.6) * rng.choice([-1, 1])))
            continue
        _draw_body(draw, part)

    if cls == "solder_bridge":
        part = parts[target]
        pads = part["pads"]
        if part["kind"] == "ic" and len(pads) >= 4:
            j = int(rng.integers(0, len(pads) // 2 - 1)) * 2 + int(rng.integers(2))
            a, b = pads[j], pads[j + 2]
        else:
            a, b = pads[0], pads[1]
        x0, y0 = min(a[0], b[0]), min(a[1], b[1])
        x1, y1 = max(a[2], b[2]), max(a[3], b[3])
        cy = (y0 + y1) / 2
        hh = max(2, (y1 - y0) * rng.uniform(0.25, 0.45) * d.bridge_scale)
        draw.ellipse((x0, cy - hh, x1, cy + hh), fill=SOLDER)
    elif cls == "open_trace":
        x0, y0, x1, y1 = traces[int(rng.integers(len(traces)))]
        t = rng.uniform(0.3, 0.7)
        gx, gy = x0 + (x1 - x0) * t, y0 + (y1 - y0) * t
        gap = max(4, r // d.gap_div)
        draw.rectangle((gx - gap / 2, gy - gap / 2, gx + gap / 2, gy + gap / 2), fill=board)
    elif cls == "foreign_object":
        colour = tuple(int(c) for c in rng.integers(60, 256, size=3))
        if rng.random() < 0.5:  # fibre
            pts = [(float(rng.integers(0, r)), float(rng.integers(0, r)))]
            for _ in range(5):
                pts.append((pts[-1][0] + rng.normal(0, r / 8), pts[-1][1] + rng.normal(0, r / 8)))
            draw.line(pts, fill=colour, width=max(2, int(r // 32 * d.debris_scale)), joint="curve")
        else:  # chip of material
            cx, cy = rng.integers(r // 8, r - r // 8, size=2)
            rad = r * rng.uniform(0.06, 0.11) * d.debris_scale
            pts = [
                (
                    cx + rad * rng.uniform(0.6, 1.3) * math.cos(a),
                    cy + rad * rng.uniform(0.6, 1.3) * math.sin(a),
                )
                for a in np.linspace(0, 2 * math.pi, 7)[:-1]
            ]
            draw.polygon(pts, fill=colour)

    # camera: rotation, lighting, blur, noise
    angle = float(rng.uniform(-15, 15))
    if d.rotation_deg != 15.0:  # scaled only off the standard set, whose files stay byte-identical
        angle *= d.rotation_deg / 15.0
    img = img.rotate(angle, resample=Image.Resampling.BILINEAR, fillcolor=board)
    img = img.resize((size, size), Image.Resampling.BILINEAR)
    if rng.random() < d.blur_prob:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 0.7)))
    arr = np.asarray(img, dtype=np.float32)
    yy, xx = np.mgrid[0:size, 0:size] / max(1, size - 1)
    ang = rng.uniform(0, 2 * math.pi)
    grad = 1.0 + rng.uniform(0.0, 0.35) * d.light_scale * (
        (xx - 0.5) * math.cos(ang) + (yy - 0.5) * math.sin(ang)
    )
    brightness = rng.uniform(0.75, 1.25)
    if d.light_scale != 1.0:
        brightness = 1.0 + (brightness - 1.0) * d.light_scale
    arr = arr * grad[..., None] * brightness
    arr += rng.normal(0, rng.uniform(2, 9) * d.noise_scale, size=arr.shape)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _write(job: tuple[int, int, int, int, int, str, str, str]) -> None:
    seed, s_idx, c_idx, i, size, cls, path, difficulty = job
    render(cls, np.random.default_rng([seed, s_idx, c_idx, i]), size, difficulty).save(path, optimize=False)


def synthesize(
    out: str | Path,
    num_images: int,
    image_size: int = 64,
    seed: int = 0,
    workers: int = 1,
    difficulty: str = "standard",
) -> dict:
    """Write ``num_images`` images in total (70/15/15 train/val/test, balanced over CLASSES)
    under ``out``; returns counts per split. Deterministic per ``seed`` (also with ``workers``
    processes: every image has its own RNG)."""
    if num_images < len(CLASSES) * 3:
        raise ValueError(f"num_images must be at least {len(CLASSES) * 3} (one per class and split)")
    if image_size < 16:
        raise ValueError("image_size must be at least 16")
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty {difficulty!r}: allowed {', '.join(DIFFICULTIES)}")
    out = Path(out)
    counts: dict[str, int] = {}
    jobs: list[tuple[int, int, int, int, int, str, str, str]] = []
    per_class_total = num_images // len(CLASSES)
    split_names = list(SPLITS)
    for s_idx, split in enumerate(split_names):
        if split == "train":
            n = per_class_total - 2 * max(1, round(per_class_total * SPLITS["val"]))
        else:
            n = max(1, round(per_class_total * SPLITS[split]))
        counts[split] = 0
        for c_idx, cls in enumerate(CLASSES):
            folder = out / split / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                path = str(folder / f"{cls}_{i:05d}.png")
                jobs.append((seed, s_idx, c_idx, i, image_size, cls, path, difficulty))
                counts[split] += 1
    if workers > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(workers) as pool:
            pool.map(_write, jobs, chunksize=16)
    else:
        for job in jobs:
            _write(job)
    log.info("wrote %s under %s", counts, out)
    return {
        "classes": CLASSES,
        "counts": counts,
        "image_size": image_size,
        "seed": seed,
        "difficulty": difficulty,
        "root": str(out),
    }
