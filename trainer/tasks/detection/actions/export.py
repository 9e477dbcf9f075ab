"""``export``: ONNX (opset 17, symbolic batch, NMS-free outputs) + manifest, parity-checked on
real images against PyTorch (see :mod:`trainer.tasks.detection.export` for the graph's contract)."""

from __future__ import annotations

from pathlib import Path

from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.export import export_detector
from trainer.tasks.detection.spec import DetectionSpec


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """ONNX (opset 17, symbolic batch, NMS-free outputs) + manifest, parity-checked."""
    ckpt = Path(spec.export.checkpoint or ctx.default_checkpoint("train"))
    onnx_path, manifest_path, metrics = export_detector(spec, ckpt, ctx.out_dir)
    return ActionOutput(metrics=metrics, onnx_path=onnx_path, manifest_path=manifest_path)
