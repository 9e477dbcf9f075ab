"""``export``: ONNX (opset 17, symbolic batch, NMS-free outputs) + manifest, parity-checked on
real images against PyTorch (see :mod:`trainer.tasks.detection.export` for the graph's contract)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.export import (
    ManifestInfo,
    default_version,
    export_onnx,
    ort_session,
    write_labels,
    write_manifest,
)
from trainer.models.checkpoint import count_params
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.data import open_split
from trainer.tasks.detection.export import (
    INPUT,
    OUTPUTS,
    ExportWrapper,
    _images,
    _set_detection_fields,
    matched_difference,
)
from trainer.tasks.detection.model import load_detector
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """ONNX (opset 17, symbolic batch, NMS-free outputs) + manifest, parity-checked."""
    ckpt = Path(spec.export.checkpoint or ctx.default_checkpoint("train"))
    loaded = load_detector(ckpt)
    model = ExportWrapper(loaded.model.eval())
    val = open_split(spec, "val")
    if loaded.config.image_size != spec.dataset.image_size:
        spec = spec.model_copy(deep=True)
        spec.dataset.image_size = loaded.config.image_size
    example, _ = _images(spec, val, 2)
    onnx_path = ctx.out_dir / "model.onnx"
    dynamic = spec.export.batch_size == -1
    if not dynamic:
        example, _ = _images(spec, val, spec.export.batch_size)
    export_onnx(
        model,
        example,
        onnx_path,
        opset=spec.export.opset,
        dynamic_batch=dynamic,
        input_names=(INPUT,),
        output_names=OUTPUTS,
    )
    sess = ort_session(onnx_path)
    parity: dict[str, float] = {}
    for n in (1, 3) if dynamic else (spec.export.batch_size,):
        batch, _ = _images(spec, val, n, offset=2)
        with torch.no_grad():
            t_logits, t_boxes = (v.numpy() for v in model(batch))
        o_logits, o_boxes = sess.run(list(OUTPUTS), {INPUT: batch.numpy()})
        parity[f"parity_max_diff_b{n}"] = matched_difference(t_logits, t_boxes, o_logits, o_boxes)
    worst = max(parity.values())
    if worst > spec.export.parity_atol:
        raise RuntimeError(
            f"ONNX differs from PyTorch by {worst:.2e} > export.parity_atol={spec.export.parity_atol}"
        )
    cat_ids = [val.label_to_cat[i] for i in range(len(val.labels))]
    lineage = dict(loaded.lineage)
    history = [*lineage.get("history", []), "export"]
    info = ManifestInfo(
        name=spec.export.name,
        version=spec.export.version or default_version(spec.export.name, "export"),
        task="detection",
        labels=loaded.labels,
        image_size=loaded.config.image_size,
        mean=loaded.mean,
        std=loaded.std,
        precision="fp32",
        opset=spec.export.opset,
        backbone=loaded.config.backbone,
        metrics={k: v for k, v in loaded.metrics.items() if isinstance(v, (int, float))},
        lineage={
            "action": "export",
            "teacher": lineage.get("teacher", ""),
            "history": history,
            "details": {"num_queries": loaded.config.num_queries, "checkpoint": str(ckpt)},
        },
        complexity={"params": float(count_params(loaded.model))},
    )
    manifest_path = write_manifest(onnx_path, info)
    _set_detection_fields(manifest_path, cat_ids)
    write_labels(ctx.out_dir / "labels.txt", loaded.labels)
    metrics = {
        **parity,
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": spec.export.opset,
        "dynamic_batch": dynamic,
    }
    log.info("exported %s (%s)", onnx_path, metrics)
    return ActionOutput(metrics=metrics, onnx_path=onnx_path, manifest_path=manifest_path)
