"""evaluate and inference, for a PyTorch checkpoint (.pth) or an exported/quantized ONNX model
(.onnx with its manifest.json, run with ONNX Runtime on CPU)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.datasets.folder import PathDataset, eval_transform, list_images, scan_split
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


def evaluate(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Accuracy, per-class precision/recall/F1 and the confusion matrix (JSON + PNG)."""
    path = resolve(spec.evaluate.checkpoint, ctx.default_checkpoint("train"))
    device = select_device(spec.train.device) if path.suffix != ".onnx" else torch.device("cpu")
    pred = load_predictor(path, device)
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


def inference(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Predict every image under inference.input_dir; predictions.csv / predictions.json."""
    path = resolve(spec.inference.checkpoint, ctx.default_checkpoint("train"))
    device = select_device(spec.train.device) if path.suffix != ".onnx" else torch.device("cpu")
    pred = load_predictor(path, device)
    folder = Path(spec.inference.input_dir) if spec.inference.input_dir else Path(spec.dataset.root) / "test"
    from trainer.datasets.folder import image_ok

    paths, corrupt = [], []
    for p in list_images(folder):
        (paths if image_ok(p) else corrupt).append(p)
    if corrupt:
        if spec.dataset.corrupt_images.value == "error":
            raise ValueError(f"corrupt image {corrupt[0]} (dataset.corrupt_images=error)")
        log.warning("skipped %d corrupt image(s): %s", len(corrupt), ", ".join(map(str, corrupt[:10])))
    if not paths:
        raise ValueError(f"no readable images under {folder}")
    dl = DataLoader(
        PathDataset(paths, eval_transform(pred.image_size, pred.mean, pred.std)),
        batch_size=spec.inference.batch_size,
        num_workers=spec.train.num_workers,
    )
    k = min(spec.inference.topk, len(pred.labels))
    rows = []
    for images, idx in dl:
        logits = pred(images)
        probs = torch.softmax(torch.from_numpy(logits).float(), 1).numpy()
        top = np.argsort(-probs, axis=1)[:, :k]
        for row, i in enumerate(idx.tolist()):
            rows.append(
                {
                    "file": str(paths[i]),
                    "label": pred.labels[top[row, 0]],
                    "score": round(float(probs[row, top[row, 0]]), 6),
                    "topk": [
                        {"label": pred.labels[j], "score": round(float(probs[row, j]), 6)} for j in top[row]
                    ],
                }
            )
    fmt = spec.inference.output_format.value
    if fmt in ("csv", "both"):
        with open(ctx.out_dir / "predictions.csv", "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(["file", "label", "score"])
            for r in rows:
                w.writerow([r["file"], r["label"], r["score"]])
    if fmt in ("json", "both"):
        write_json(ctx.out_dir / "predictions.json", rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["label"]] = counts.get(r["label"], 0) + 1
    return ActionOutput(
        metrics={
            "num_images": len(rows),
            "corrupt_images": len(corrupt),
            "predicted_counts": counts,
            "model": str(path),
        }
    )
