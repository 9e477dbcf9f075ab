"""Running a detector: PyTorch or ONNX Runtime over a split, decoded to COCO results and scored,
and drawing detections on images. Both runners decode the same NMS-free outputs
(:func:`trainer.tasks.detection.metrics.decode`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.tasks.detection.data import CocoSplit, loader
from trainer.tasks.detection.export import INPUT
from trainer.tasks.detection.metrics import coco_map, decode, to_coco_results
from trainer.tasks.detection.spec import DetectionSpec


@torch.no_grad()
def predict_torch(
    model: nn.Module, dl, device: torch.device, *, max_detections: int, conf_threshold: float = 0.0
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    model.eval()
    dets, ids = [], []
    for images, targets in dl:
        if not targets:  # the whole batch was undecodable (skipped, counted by the dataset)
            continue
        out = model(pixel_values=images.to(device))
        sizes = np.stack([t["orig_size"].numpy() for t in targets])
        dets += decode(
            out.logits.float().cpu().numpy(),
            out.pred_boxes.float().cpu().numpy(),
            sizes,
            max_detections=max_detections,
            conf_threshold=conf_threshold,
        )
        ids += [int(t["image_id"]) for t in targets]
    return dets, ids


def evaluate_model(
    model: nn.Module,
    spec: DetectionSpec,
    split: CocoSplit,
    device: torch.device,
    *,
    batch_size: int,
    max_detections: int = 100,
    conf_threshold: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    dl = loader(spec, split, train=False, batch_size=batch_size)
    return evaluate_predictions(
        model, split, dl, device, max_detections=max_detections, conf_threshold=conf_threshold
    )


def evaluate_predictions(
    model: nn.Module,
    split: CocoSplit,
    dl,
    device: torch.device,
    *,
    max_detections: int = 100,
    conf_threshold: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO mAP of ``model`` over a loader of ``split`` (the validator keeps one loader)."""
    dets, ids = predict_torch(model, dl, device, max_detections=max_detections, conf_threshold=conf_threshold)
    results = to_coco_results(dets, ids, split.label_to_cat)
    return coco_map(split.coco, results), results


class OnnxDetector:
    """An exported detector (model.onnx + manifest.json) on ONNX Runtime CPU."""

    def __init__(self, onnx_path: str | Path, threads: int = 0):
        from protos.manifest import load_manifest
        from trainer.export import ort_session

        self.path = Path(onnx_path)
        self.manifest = load_manifest(self.path.with_name("manifest.json"))
        if self.manifest.task != "detection":
            raise ValueError(f"{self.path}: manifest task is {self.manifest.task!r}, not detection")
        self.session = ort_session(self.path, threads)
        det = self.manifest.detection
        self.logits_name, self.boxes_name = det.logits_output or "logits", det.boxes_output or "boxes"
        self.input_name = self.manifest.inputs[0].name if self.manifest.inputs else INPUT
        p = self.manifest.preprocessing
        self.image_size, self.mean, self.std = int(p.height), list(p.mean), list(p.std)
        self.labels = list(self.manifest.labels)
        ids = self.manifest.lineage.details.get("category_ids", "")
        cats = [int(v) for v in ids.split(",")] if ids else list(range(1, len(self.labels) + 1))
        self.label_to_cat = dict(enumerate(cats))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.session.run(
            [self.logits_name, self.boxes_name], {self.input_name: batch.astype(np.float32)}
        )
        return out[0], out[1]


def evaluate_onnx(
    onnx_path: str | Path,
    spec: DetectionSpec,
    split: CocoSplit,
    *,
    batch_size: int = 8,
    max_detections: int = 100,
    conf_threshold: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO metrics of an exported model run by ONNX Runtime on ``split``."""
    det = OnnxDetector(onnx_path)
    if det.labels != split.labels:
        raise ValueError(f"model labels {det.labels} differ from the split's {split.labels}")
    if det.image_size != spec.dataset.image_size:
        spec = spec.model_copy(deep=True)
        spec.dataset.image_size = det.image_size
    dl = loader(spec, split, train=False, batch_size=batch_size)
    dets, ids = [], []
    for images, targets in dl:
        logits, boxes = det.run(images.numpy())
        sizes = np.stack([t["orig_size"].numpy() for t in targets])
        dets += decode(logits, boxes, sizes, max_detections=max_detections, conf_threshold=conf_threshold)
        ids += [int(t["image_id"]) for t in targets]
    results = to_coco_results(dets, ids, split.label_to_cat)
    return coco_map(split.coco, results), results


def draw_detections(image, det: dict[str, np.ndarray], labels: list[str]):
    from PIL import ImageDraw

    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    palette = [(255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 80, 80), (80, 255, 80), (80, 160, 255)]
    for s, lab, box in zip(det["scores"], det["labels"], det["boxes"], strict=True):
        colour = palette[int(lab) % len(palette)]
        draw.rectangle([float(v) for v in box], outline=colour, width=1)
        draw.text((float(box[0]), max(0.0, float(box[1]) - 10)), f"{labels[int(lab)]} {s:.2f}", fill=colour)
    return image
