"""``inference``: detect on a folder of images: COCO-results JSON (+ image list) and annotated images."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.metrics import decode, to_coco_results
from trainer.tasks.detection.model import load_detector
from trainer.tasks.detection.predict import OnnxDetector, draw_detections
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """COCO-results JSON and annotated images for a folder of images."""
    ckpt = Path(spec.inference.checkpoint or ctx.default_checkpoint("train"))
    folder = Path(spec.inference.input_dir) if spec.inference.input_dir else Path(spec.dataset.root) / "test"
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images in {folder}")
    cfg = spec.inference
    if ckpt.suffix == ".onnx":
        runner = OnnxDetector(ckpt)
        labels, size, mean, std = runner.labels, runner.image_size, runner.mean, runner.std
        label_to_cat = runner.label_to_cat
    else:
        loaded = load_detector(ckpt, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
        model = loaded.model.eval()
        labels, size, mean, std = loaded.labels, loaded.config.image_size, loaded.mean, loaded.std
        label_to_cat = {int(k): int(v) for k, v in (loaded.payload.get("label_to_cat") or {}).items()} or {
            i: i + 1 for i in range(len(labels))
        }
    images_out = ctx.out_dir / "annotated"
    images_out.mkdir(exist_ok=True)
    results, unreadable = [], []
    index: list[dict[str, Any]] = []
    for start in range(0, len(paths), cfg.batch_size):
        chunk, arrays, sizes = [], [], []
        for p in paths[start : start + cfg.batch_size]:
            try:
                with Image.open(p) as raw:
                    im = raw.convert("RGB")
            except Exception as exc:
                unreadable.append(f"{p}: {type(exc).__name__}: {exc}")
                continue
            chunk.append((p, im))
            arr = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
            arrays.append(
                ((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)
            )
            sizes.append((im.height, im.width))
        if not chunk:
            continue
        batch = np.stack(arrays).astype(np.float32)
        if ckpt.suffix == ".onnx":
            logits, boxes = runner.run(batch)
        else:
            with torch.no_grad():
                out = model(pixel_values=torch.from_numpy(batch))
            logits, boxes = out.logits.numpy(), out.pred_boxes.numpy()
        dets = decode(
            logits,
            boxes,
            np.asarray(sizes),
            max_detections=cfg.max_detections,
            conf_threshold=cfg.conf_threshold,
        )
        for (p, im), det in zip(chunk, dets, strict=True):
            image_id = len(index) + 1
            index.append(
                {
                    "id": image_id,
                    "file_name": str(p.relative_to(folder)),
                    "width": im.width,
                    "height": im.height,
                }
            )
            results += to_coco_results([det], [image_id], label_to_cat)
            if len(index) <= cfg.annotate:
                draw_detections(im, det, labels).save(images_out / (p.stem + ".png"))
    if unreadable:
        log.warning("skipped %d unreadable images:\n  %s", len(unreadable), "\n  ".join(unreadable[:20]))
    (ctx.out_dir / "detections.json").write_text(json.dumps(results), encoding="utf-8")
    (ctx.out_dir / "images.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    metrics = {
        "images": len(index),
        "detections": len(results),
        "unreadable": len(unreadable),
        "conf_threshold": cfg.conf_threshold,
    }
    return ActionOutput(metrics=metrics)
