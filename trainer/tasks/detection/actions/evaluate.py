"""``evaluate``: COCO mAP@[.5:.95], mAP@.5 and per-class AP of a .pth or .onnx model on a split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.detection.data import open_split
from trainer.tasks.detection.model import load_detector
from trainer.tasks.detection.predict import evaluate_model, evaluate_onnx
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """COCO mAP@[.5:.95], mAP@.5, per-class AP of a .pth or .onnx model."""
    ckpt = Path(spec.evaluate.checkpoint or ctx.default_checkpoint("train"))
    split = open_split(spec, spec.evaluate.split)
    cfg = spec.evaluate
    if ckpt.suffix == ".onnx":
        metrics, results = evaluate_onnx(
            ckpt,
            spec,
            split,
            batch_size=cfg.batch_size,
            max_detections=cfg.max_detections,
            conf_threshold=cfg.conf_threshold,
        )
    else:
        loaded = load_detector(ckpt, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
        if loaded.labels != split.labels:
            raise ValueError(f"model labels {loaded.labels} differ from the split's {split.labels}")
        device = select_device(spec.train.device)
        loaded.model.to(device)
        metrics, results = evaluate_model(
            loaded.model,
            spec,
            split,
            device,
            batch_size=cfg.batch_size,
            max_detections=cfg.max_detections,
            conf_threshold=cfg.conf_threshold,
        )
    (ctx.out_dir / "detections.json").write_text(json.dumps(results), encoding="utf-8")
    metrics.update(
        {
            "split": cfg.split,
            "checkpoint": str(ckpt),
            "images": len(split.images),
            "data_report": {k: v for k, v in split.report.items() if k != "unreadable"},
        }
    )
    log.info("mAP %.4f  mAP50 %.4f", metrics["map"], metrics["map50"])
    return ActionOutput(metrics=metrics)
