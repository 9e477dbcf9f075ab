"""``export``: ONNX (pinned opset, dynamic batch) checked against PyTorch, plus manifest and labels."""

from __future__ import annotations

import logging

from trainer.export import ManifestInfo, default_version, write_labels, write_manifest
from trainer.models.checkpoint import load_checkpoint
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import resolve
from trainer.tasks.classification.export import export_checkpoint, lineage_after
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """ONNX (pinned opset, dynamic batch) checked against PyTorch, plus manifest and labels."""
    path = resolve(spec.export.checkpoint, ctx.default_checkpoint("train"))
    ck = load_checkpoint(path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
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
            lineage=lineage_after(ck, path, "export"),
            complexity={"params": metrics["params"], "macs": metrics["macs"]},
        ),
    )
    write_labels(ctx.out_dir / "labels.txt", ck.labels)
    metrics.update(onnx_bytes=onnx_path.stat().st_size, opset=e.opset, dynamic_batch=e.batch_size == -1)
    return ActionOutput(metrics=metrics, onnx_path=onnx_path, manifest_path=manifest)
