"""``quantize``: INT8 Q/DQ ONNX (ONNX Runtime static quantization, calibrated on real images) of
an exported model.onnx or of a .pth (exported first)."""

from __future__ import annotations

import logging
import shutil

from protos.manifest import load_manifest
from protos.onnx_io import load_graph, opset_of
from protos.ort_int8 import array_feeds, first_input_name, quantize_static_qdq
from trainer.datasets.folder import preprocess_numpy
from trainer.export import ManifestInfo, default_version, write_labels, write_manifest
from trainer.models.checkpoint import load_checkpoint
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import resolve
from trainer.tasks.classification.export import export_checkpoint, lineage_after, onnx_accuracy, sample_paths
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """INT8 Q/DQ ONNX with ONNX Runtime static quantization (calibrated on real images)."""
    q = spec.quantize
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
        ck = load_checkpoint(src, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
        labels, size, mean, std = ck.labels, ck.image_size, ck.mean, ck.std
        fp32, fp32_metrics = export_checkpoint(ck, src, spec, ctx.out_dir, onnx_name="model_fp32.onnx")
        lineage = lineage_after(ck, src, "quantize")
        name, backbone = spec.export.name, ck.backbone
        cx = {"params": fp32_metrics["params"], "macs": fp32_metrics["macs"]}
    calib_paths = sample_paths(spec, q.calibration_split, labels, q.num_calibration_samples)
    calib = preprocess_numpy(calib_paths, size, mean, std)
    out = ctx.out_dir / "model.onnx"
    quantize_static_qdq(
        fp32,
        out,
        array_feeds(first_input_name(fp32), calib),
        symbolic_shape_inference=True,
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
    opset = opset_of(load_graph(out))
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
