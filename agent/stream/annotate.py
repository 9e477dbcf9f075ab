"""Boxes, labels, track ids and a status line drawn on a frame (DeepStream's ``nvdsosd``), with
PIL so the agent needs no OpenCV. One colour per track id (per label when untracked)."""

from __future__ import annotations

import io
import zlib

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from agent.stream.infer import Detections

# PIL's bitmap font, not the FreeType one load_default() gives: drawing runs in the publishing
# thread with the GIL held, and FreeType's rendering was most of it (2.3 ms against 0.75 ms a
# 720p frame with 8 labelled boxes)
_FONT = ImageFont.load_default_imagefont()


# bright colours that stand out on boards, belts and scenes alike (black text reads on all)
_PALETTE = [(0, 255, 255), (255, 255, 0), (0, 255, 0), (255, 128, 0), (255, 0, 255), (128, 192, 255),
            (255, 160, 160), (160, 255, 160)]  # fmt: skip


def _colour(key: str) -> tuple[int, int, int]:
    return _PALETTE[zlib.crc32(key.encode()) % len(_PALETTE)]


def annotate(image: np.ndarray | Image.Image, det: Detections, caption: str = "") -> Image.Image:
    """``image`` with the detections drawn: a copy of an array, or a PIL image drawn on in place
    (``Frame.canvas()`` gives a fresh one, cheaper than the array's copy)."""
    out = image if isinstance(image, Image.Image) else Image.fromarray(image)
    draw = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 240))
    for i in range(len(det.scores)):
        x0, y0, x1, y1 = (float(v) for v in det.boxes[i])
        tid = int(det.track_ids[i]) if det.track_ids is not None else -1
        colour = _colour(f"t{tid}" if tid >= 0 else det.labels[i])
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=width)
        text = (f"#{tid} " if tid >= 0 else "") + f"{det.labels[i]} {float(det.scores[i]):.2f}"
        tw = draw.textlength(text, font=_FONT)
        ty = y0 - 12 if y0 >= 26 else y0 + width  # above the box, or inside it at the top of the frame
        draw.rectangle([x0, ty, x0 + tw + 4, ty + 12], fill=colour)
        draw.text((x0 + 2, ty), text, fill=(0, 0, 0), font=_FONT)
    line = caption
    if det.frame_label is not None:
        line = f"{det.frame_label} {float(det.frame_score or 0):.2f}  {caption}".strip()
    if line:  # bottom left, clear of the boxes' labels
        tw = draw.textlength(line, font=_FONT)
        top = out.height - 13
        draw.rectangle([0, top, tw + 6, out.height], fill=(0, 0, 0))
        draw.text((3, top), line, fill=(255, 255, 255), font=_FONT)
    return out


def jpeg(image: Image.Image, quality: int = 80) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
