"""``evaluate``: accuracy, per-class P/R/F1 and the confusion matrix of a .pth or an .onnx model
(with its manifest.json, run with ONNX Runtime on CPU)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from trainer.datasets.folder import eval_transform, scan_split
from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.classification.common import (
    classification_metrics,
    load_predictor,
    loader,
    plot_confusion,
    resolve,
    write_json,
)
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (JSON + PNG)."""
    path = resolve(spec.evaluate.checkpoint, ctx.default_checkpoint("train"))
    device = select_device(spec.train.device) if path.suffix != ".onnx" else torch.device("cpu")
    pred = load_predictor(path, device, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    samples = scan_split(
        Path(spec.dataset.root), spec.evaluate.split, pred.labels, spec.dataset.corrupt_images.value
    )
    dl = loader(
        samples,
        eval_transform(pred.image_size, pred.mean, pred.std),
        spec.evaluate.batch_size,
        shuffle=False,
        num_workers=spec.train.num_workers,
    )
    outs, tgts = [], []
    for images, targets in dl:
        outs.append(pred(images))
        tgts.append(targets.numpy())
    logits, target = np.concatenate(outs), np.concatenate(tgts)
    m = classification_metrics(logits.argmax(1), target, pred.labels)
    m.update(
        split=spec.evaluate.split, model=str(path), runtime=pred.kind, corrupt_images=len(samples.corrupt)
    )
    png = plot_confusion(
        m["confusion_matrix"],
        pred.labels,
        ctx.out_dir / "confusion_matrix.png",
        f"{path.name} on {spec.evaluate.split}: accuracy {m['accuracy']:.3f}",
    )
    write_json(
        ctx.out_dir / "confusion_matrix.json", {"labels": pred.labels, "matrix": m["confusion_matrix"]}
    )
    log.info(
        "accuracy %.4f on %d %s images (%s)", m["accuracy"], m["num_images"], spec.evaluate.split, pred.kind
    )
    for label, pc in m["per_class"].items():
        log.info(
            "  %-20s precision %.3f recall %.3f (n=%d)", label, pc["precision"], pc["recall"], pc["support"]
        )
    return ActionOutput(metrics=m, extra={"confusion_png": png})
