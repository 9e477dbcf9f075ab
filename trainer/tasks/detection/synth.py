"""Procedural printed-circuit-board images with small defects and COCO annotations.

The six defect classes of the public PCB defect sets, drawn where they occur on a real board:

- ``missing_hole``: a pad whose drill hole is absent (its neighbours have one);
- ``mouse_bite``: small bites taken out of a trace's edge;
- ``open_circuit``: a trace cut through;
- ``short``: copper bridging two neighbouring traces;
- ``spur``: a thin sliver of copper sticking out of a trace;
- ``spurious_copper``: an isolated blob of copper where none belongs.

Several defects per image (0 to ``max_defects``; some images have none, as in real inspection
data). Nuisance variation: solder-mask colour, trace pitch and width (scale), lighting gradient
and brightness, sensor noise and blur. Layout: ``out/<split>/*.png`` and
``out/<split>/annotations.json`` (COCO; category ids start at 1; boxes ``[x, y, w, h]`` in
pixels). Every image draws from its own RNG seeded with ``(seed, split, index)``: the same seed
gives byte-identical files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

log = logging.getLogger(__name__)

CLASSES = ["missing_hole", "mouse_bite", "open_circuit", "short", "spur", "spurious_copper"]
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}
BOARDS = [(20, 90, 40), (10, 60, 30), (25, 50, 110), (20, 20, 25), (110, 25, 25), (60, 30, 80)]
COPPER = [(200, 150, 60), (215, 175, 95), (185, 130, 50), (205, 205, 210)]


def _jit(rng: np.random.Generator, colour: tuple[int, ...], amount: int) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _clip_box(x0: float, y0: float, x1: float, y1: float, size: int) -> list[float] | None:
    x0, y0 = max(0.0, x0), max(0.0, y0)
    x1, y1 = min(float(size), x1), min(float(size), y1)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    return [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)]


def render(
    rng: np.random.Generator, size: int, max_defects: int = 4
) -> tuple[Image.Image, list[tuple[int, list[float]]]]:
    """One board image and its defects as (class index, [x, y, w, h])."""
    board = _jit(rng, BOARDS[rng.integers(len(BOARDS))], 12)
    copper = _jit(rng, COPPER[rng.integers(len(COPPER))], 15)
    image = Image.new("RGB", (size, size), board)
    draw = ImageDraw.Draw(image)
    scale = size / 256 * rng.uniform(0.8, 1.3)
    width = max(2, int(round(rng.uniform(4, 7) * scale)))
    pitch = max(width * 3, int(round(rng.uniform(20, 30) * scale)))
    y = int(rng.integers(pitch // 2, pitch))
    rows: list[tuple[int, int, int]] = []  # (y centre, x start, x end)
    while y < size - pitch // 3:
        x0 = int(rng.integers(0, size // 5))
        x1 = int(size - rng.integers(0, size // 5))
        draw.rectangle([x0, y - width // 2, x1, y + width // 2], fill=copper)
        rows.append((y, x0, x1))
        y += pitch
    pad_r = max(3, int(width * rng.uniform(1.1, 1.5)))
    hole_r = max(1, pad_r // 2)
    pads: list[tuple[int, int]] = []
    for yc, x0, x1 in rows:
        for xc in (x0, x1):
            if pad_r <= xc <= size - pad_r:
                pads.append((xc, yc))
    for xc, yc in pads:
        draw.ellipse([xc - pad_r, yc - pad_r, xc + pad_r, yc + pad_r], fill=copper)
    n_defects = int(rng.integers(0, max_defects + 1))
    defects: list[tuple[int, list[float]]] = []
    missing = set()
    for _ in range(n_defects):
        cls = int(rng.integers(len(CLASSES)))
        name = CLASSES[cls]
        box = None
        if name == "missing_hole" and pads:
            i = int(rng.integers(len(pads)))
            if i in missing:
                continue
            missing.add(i)
            xc, yc = pads[i]
            box = _clip_box(xc - pad_r - 2, yc - pad_r - 2, xc + pad_r + 2, yc + pad_r + 2, size)
        elif name in ("mouse_bite", "open_circuit", "spur") and rows:
            yc, x0, x1 = rows[int(rng.integers(len(rows)))]
            if x1 - x0 < 4 * pad_r + 20:
                continue
            xc = int(rng.integers(x0 + 2 * pad_r + 6, x1 - 2 * pad_r - 6))
            if name == "open_circuit":
                gap = max(2, int(width * rng.uniform(0.6, 1.4)))
                draw.rectangle([xc, yc - width, xc + gap, yc + width], fill=board)
                box = _clip_box(xc - 3, yc - width - 2, xc + gap + 3, yc + width + 2, size)
            elif name == "mouse_bite":
                side = 1 if rng.random() < 0.5 else -1
                n = int(rng.integers(2, 4))
                r = max(2, width // 2)
                for k in range(n):
                    cx = xc + k * (r + 1)
                    cy = yc + side * (width // 2)
                    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=board)
                box = _clip_box(xc - r - 2, yc - width - 2, xc + n * (r + 1) + r + 2, yc + width + 2, size)
            else:  # spur
                side = 1 if rng.random() < 0.5 else -1
                length = int(rng.uniform(0.3, 0.6) * pitch)
                thick = max(1, width // 3)
                tip = (xc + int(rng.integers(-4, 5)), yc + side * (width // 2 + length))
                draw.polygon([(xc - thick, yc), (xc + thick, yc), tip], fill=copper)
                ys = sorted([yc, tip[1]])
                box = _clip_box(
                    min(xc - thick, tip[0]) - 2, ys[0] - 2, max(xc + thick, tip[0]) + 2, ys[1] + 2, size
                )
        elif name == "short" and len(rows) >= 2:
            j = int(rng.integers(len(rows) - 1))
            (ya, a0, a1), (yb, b0, b1) = rows[j], rows[j + 1]
            lo, hi = max(a0, b0) + 2 * pad_r + 4, min(a1, b1) - 2 * pad_r - 4
            if hi - lo < 4:
                continue
            xc = int(rng.integers(lo, hi))
            bw = max(2, int(width * rng.uniform(0.6, 1.2)))
            draw.rectangle([xc, ya, xc + bw, yb], fill=copper)
            box = _clip_box(xc - 3, ya - 2, xc + bw + 3, yb + 2, size)
        elif name == "spurious_copper":
            r = max(3, int(rng.uniform(0.2, 0.35) * pitch))
            cx = int(rng.integers(r + 2, size - r - 2))
            # between two rows, where the board is bare
            if rows:
                gaps = [(rows[k][0] + rows[k + 1][0]) // 2 for k in range(len(rows) - 1)] or [
                    rows[0][0] + pitch // 2
                ]
                cy = int(
                    np.clip(gaps[int(rng.integers(len(gaps)))] + rng.integers(-2, 3), r + 2, size - r - 2)
                )
            else:
                cy = int(rng.integers(r + 2, size - r - 2))
            angles = np.sort(rng.uniform(0, 2 * np.pi, 7))
            radii = rng.uniform(0.5, 1.0, 7) * r
            pts = [
                (cx + float(rr * np.cos(a)), cy + float(rr * np.sin(a)))
                for a, rr in zip(angles, radii, strict=True)
            ]
            draw.polygon(pts, fill=copper)
            px, py = [p[0] for p in pts], [p[1] for p in pts]
            box = _clip_box(min(px) - 2, min(py) - 2, max(px) + 2, max(py) + 2, size)
        if box is not None:
            defects.append((cls, box))
    hole_colour = (int(rng.integers(5, 30)),) * 3
    for i, (xc, yc) in enumerate(pads):
        if i not in missing:
            draw.ellipse([xc - hole_r, yc - hole_r, xc + hole_r, yc + hole_r], fill=hole_colour)
    # lighting gradient, brightness, noise, blur
    arr = np.asarray(image, dtype=np.float32)
    gx, gy = rng.uniform(-0.25, 0.25, 2)
    ramp = 1 + gx * np.linspace(-1, 1, size)[None, :] + gy * np.linspace(-1, 1, size)[:, None]
    arr = arr * ramp[..., None] * rng.uniform(0.75, 1.2)
    arr += rng.normal(0, rng.uniform(2, 9), arr.shape)
    image = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.9)))
    return image, defects


def _split_counts(num_images: int) -> dict[str, int]:
    counts = {s: max(1, int(round(num_images * f))) for s, f in SPLITS.items() if s != "train"}
    counts["train"] = max(1, num_images - sum(counts.values()))
    return {s: counts[s] for s in SPLITS}


def _draw_one(job: tuple[int, int, int, int, str]) -> list[tuple[int, list[float]]]:
    seed, s_idx, i, image_size, path = job
    image, defects = render(np.random.default_rng([seed, s_idx, i]), image_size)
    image.save(path)
    return defects


def synthesize(
    out: str | Path, num_images: int, image_size: int = 256, seed: int = 0, workers: int = 1
) -> dict[str, int]:
    """Write ``num_images`` images split 80/10/10 into ``out/{train,val,test}/`` with COCO
    ``annotations.json`` in each; returns the image count per split. ``workers`` > 1 draws in
    that many processes (same files)."""
    if num_images < 3:
        raise ValueError("num_images must be at least 3 (one image per split)")
    if image_size < 32:
        raise ValueError("image_size must be at least 32")
    out = Path(out)
    counts = _split_counts(num_images)
    for s_idx, (split, n) in enumerate(counts.items()):
        folder = out / split
        folder.mkdir(parents=True, exist_ok=True)
        images: list[dict[str, Any]] = []
        annotations: list[dict[str, Any]] = []
        names = [f"{split}_{i:06d}.png" for i in range(n)]
        jobs = [(seed, s_idx, i, image_size, str(folder / names[i])) for i in range(n)]
        if workers > 1 and n > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(workers) as pool:
                all_defects = pool.map(_draw_one, jobs, chunksize=16)
        else:
            all_defects = [_draw_one(j) for j in jobs]
        for i, defects in enumerate(all_defects):
            name = names[i]
            images.append({"id": i + 1, "file_name": name, "width": image_size, "height": image_size})
            for cls, box in defects:
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": i + 1,
                        "category_id": cls + 1,
                        "bbox": box,
                        "area": round(box[2] * box[3], 2),
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": "edgeloop synthetic PCB defects", "seed": seed},
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": k + 1, "name": c, "supercategory": "defect"} for k, c in enumerate(CLASSES)
            ],
        }
        (folder / "annotations.json").write_text(json.dumps(coco), encoding="utf-8")
        log.info("%s: %d images, %d defects", split, n, len(annotations))
    return counts
