"""The classification artifact (``model.onnx`` + ``manifest.json`` + ``labels.txt``): export of a
checkpoint with a parity check on real images, ONNX accuracy, sample images, lineage; used by
the export and quantize actions."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from trainer.datasets.folder import preprocess_numpy, scan_split
from trainer.export import export_onnx, ort_session, parity_check
from trainer.models.checkpoint import Checkpoint
from trainer.tasks.classification.pruning import complexity
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def sample_paths(spec: ClassificationSpec, split: str, labels: list[str], n: int) -> list[Path]:
    samples = scan_split(Path(spec.dataset.root), split, labels, spec.dataset.corrupt_images.value)
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(samples.items))[:n]
    return [samples.items[i][0] for i in order]


def onnx_accuracy(
    path: Path, spec: ClassificationSpec, split: str, labels: list[str], image_size: int, mean, std
) -> float:
    samples = scan_split(Path(spec.dataset.root), split, labels, spec.dataset.corrupt_images.value)
    sess = ort_session(path)
    name = sess.get_inputs()[0].name
    correct = 0
    for i in range(0, len(samples.items), 64):
        chunk = samples.items[i : i + 64]
        x = preprocess_numpy([p for p, _ in chunk], image_size, mean, std)
        pred = sess.run(None, {name: x})[0].argmax(1)
        correct += int((pred == np.array([t for _, t in chunk])).sum())
    return correct / len(samples.items)


def export_checkpoint(
    ck: Checkpoint,
    ck_path: Path,
    spec: ClassificationSpec,
    out_dir: Path,
    *,
    onnx_name: str = "model.onnx",
    action: str = "export",
) -> tuple[Path, dict]:
    e = spec.export
    labels = ck.labels
    model = ck.model.eval().to("cpu")
    real = sample_paths(spec, "val", labels, max(2, e.parity_samples))
    batch = torch.from_numpy(preprocess_numpy(real, ck.image_size, ck.mean, ck.std))
    example = batch[:1] if e.batch_size == -1 else batch[: e.batch_size]
    onnx_path = export_onnx(
        model, example, out_dir / onnx_name, opset=e.opset, dynamic_batch=e.batch_size == -1
    )
    check = batch if e.batch_size == -1 else example
    diff, scale = parity_check(onnx_path, model, check)
    log.info(
        "ONNX vs PyTorch on %d real images: max |diff| = %.3g (max |logit| %.3g)", len(check), diff, scale
    )
    allowed = e.parity_atol + e.parity_rtol * scale
    if diff > allowed:
        raise RuntimeError(
            f"ONNX output differs from PyTorch by {diff:.3g} > {allowed:.3g} (export.parity_atol + parity_rtol * {scale:.3g})"
        )
    split = "test" if (Path(spec.dataset.root) / "test").is_dir() else "val"
    acc = onnx_accuracy(onnx_path, spec, split, labels, ck.image_size, ck.mean, ck.std)
    cx = complexity(model, example[:1])
    metrics = {
        "accuracy": acc,
        "accuracy_split": split,
        "parity_max_abs_diff": diff,
        "parity_images": len(check),
        **cx,
    }
    return onnx_path, metrics


def lineage_after(ck: Checkpoint, ck_path: Path, action: str, **extra) -> dict:
    lin = dict(ck.lineage)
    history = [*lin.get("history", []), action]
    lin.update(action=action, parent_version=str(ck_path), history=history, **extra)
    return lin
