"""``inference``: predict every image of a folder with a .pth or an .onnx model."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from trainer.datasets.folder import PathDataset, eval_transform, list_images
from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.classification.common import (
    load_predictor,
    resolve,
    write_json,
)
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Predict every image under inference.input_dir; predictions.csv / predictions.json."""
    path = resolve(spec.inference.checkpoint, ctx.default_checkpoint("train"))
    device = select_device(spec.train.device) if path.suffix != ".onnx" else torch.device("cpu")
    pred = load_predictor(path, device, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    folder = Path(spec.inference.input_dir) if spec.inference.input_dir else Path(spec.dataset.root) / "test"
    from trainer.datasets.folder import image_ok

    paths: list[Path] = []
    corrupt: list[Path] = []
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
