"""export and quantize: the artifact (``model.onnx`` + ``manifest.json`` + ``labels.txt``)."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import torch

from trainer.datasets.folder import preprocess_numpy, scan_split
from trainer.export import (
    ManifestInfo,
    default_version,
    export_onnx,
    ort_session,
    parity_check,
    write_labels,
    write_manifest,
)
from trainer.models.checkpoint import Checkpoint, load_checkpoint
from trainer.prune import complexity
from trainer.quantize import qat_modelopt, quantize_static_qdq
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import resolve
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def _sample_paths(spec: ClassificationSpec, split: str, labels: list[str], n: int) -> list[Path]:
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
    real = _sample_paths(spec, "val", labels, max(2, e.parity_samples))
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


def _lineage(ck: Checkpoint, ck_path: Path, action: str, **extra) -> dict:
    lin = dict(ck.lineage)
    history = [*lin.get("history", []), action]
    lin.update(action=action, parent_version=str(ck_path), history=history, **extra)
    return lin


def export(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """ONNX (pinned opset, dynamic batch) checked against PyTorch, plus manifest and labels."""
    path = resolve(spec.export.checkpoint, ctx.default_checkpoint("train"))
    ck = load_checkpoint(path)
    onnx_path, metrics = export_checkpoint(ck, path, spec, ctx.out_dir)
    e = spec.export
    manifest = write_manifest(
        onnx_path,
        ManifestInfo(
            name=e.name,
            version=e.version or default_version(e.name, "export"),
            task="classification",
            labels=ck.labels,
            image_size=ck.image_size,
            mean=ck.mean,
            std=ck.std,
            precision="fp32",
            opset=e.opset,
            backbone=ck.backbone,
            metrics={
                "accuracy": metrics["accuracy"],
                **{k: v for k, v in ck.metrics.items() if isinstance(v, float)},
            },
            lineage=_lineage(ck, path, "export"),
            complexity={"params": metrics["params"], "macs": metrics["macs"]},
        ),
    )
    write_labels(ctx.out_dir / "labels.txt", ck.labels)
    metrics.update(onnx_bytes=onnx_path.stat().st_size, opset=e.opset, dynamic_batch=e.batch_size == -1)
    return ActionOutput(metrics=metrics, onnx_path=onnx_path, manifest_path=manifest)


def quantize(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """INT8 Q/DQ ONNX with ONNX Runtime static quantization (calibrated on real images)."""
    from protos.manifest import load_manifest

    q = spec.quantize
    if q.mode.value == "qat":
        qat_modelopt()
    src = resolve(q.checkpoint, ctx.default_checkpoint("export", "model.onnx"))
    if src.suffix == ".onnx":
        m = load_manifest(src.with_name("manifest.json"))
        labels, size = list(m.labels), int(m.preprocessing.height)
        mean, std = list(m.preprocessing.mean), list(m.preprocessing.std)
        fp32 = ctx.out_dir / "model_fp32.onnx"
        shutil.copyfile(src, fp32)
        lineage = {
            "action": "quantize",
            "parent_version": m.version,
            "prune_ratio": m.lineage.prune_ratio,
            "teacher": m.lineage.teacher,
            "history": [*m.lineage.history, "quantize"],
        }
        name, backbone, fp32_metrics = m.name, m.backbone, dict(m.metrics)
        cx = dict(m.complexity)
    else:
        ck = load_checkpoint(src)
        labels, size, mean, std = ck.labels, ck.image_size, ck.mean, ck.std
        fp32, fp32_metrics = export_checkpoint(ck, src, spec, ctx.out_dir, onnx_name="model_fp32.onnx")
        lineage = _lineage(ck, src, "quantize")
        name, backbone = spec.export.name, ck.backbone
        cx = {"params": fp32_metrics["params"], "macs": fp32_metrics["macs"]}
    calib_paths = _sample_paths(spec, q.calibration_split, labels, q.num_calibration_samples)
    calib = preprocess_numpy(calib_paths, size, mean, std)
    out = ctx.out_dir / "model.onnx"
    quantize_static_qdq(
        fp32,
        out,
        calib,
        method=q.calibrate_method.value,
        per_channel=q.per_channel,
        activation_type=q.activation_type,
        weight_type=q.weight_type,
    )
    metrics: dict = {
        "calibration_samples": len(calib_paths),
        "calibrate_method": q.calibrate_method.value,
        "per_channel": q.per_channel,
        "onnx_bytes": out.stat().st_size,
        "fp32_onnx_bytes": fp32.stat().st_size,
    }
    if q.evaluate:
        metrics["test_accuracy_int8"] = onnx_accuracy(out, spec, "test", labels, size, mean, std)
        metrics["test_accuracy_fp32"] = onnx_accuracy(fp32, spec, "test", labels, size, mean, std)
        log.info(
            "test accuracy: fp32 %.4f, int8 %.4f",
            metrics["test_accuracy_fp32"],
            metrics["test_accuracy_int8"],
        )
    lineage.update(
        quantization="int8-qdq-ptq",
        details={
            "calibrate_method": q.calibrate_method.value,
            "calibration_samples": str(len(calib_paths)),
            "per_channel": str(q.per_channel),
            "activation_type": q.activation_type,
            "weight_type": q.weight_type,
        },
    )
    manifest_metrics = (
        {"accuracy": metrics["test_accuracy_int8"], "fp32_accuracy": metrics["test_accuracy_fp32"]}
        if q.evaluate
        else {}
    )
    import onnx

    opset = next(
        (
            o.version
            for o in onnx.load(str(out), load_external_data=False).opset_import
            if o.domain in ("", "ai.onnx")
        ),
        0,
    )
    manifest = write_manifest(
        out,
        ManifestInfo(
            name=name,
            version=spec.export.version or default_version(name, "quantize"),
            task="classification",
            labels=labels,
            image_size=size,
            mean=mean,
            std=std,
            precision="int8-qdq",
            opset=opset,
            backbone=backbone,
            metrics={**{k: v for k, v in fp32_metrics.items() if k == "val_accuracy"}, **manifest_metrics},
            lineage=lineage,
            complexity=cx,
        ),
    )
    write_labels(ctx.out_dir / "labels.txt", labels)
    return ActionOutput(metrics=metrics, onnx_path=out, manifest_path=manifest)
