"""The exported detection graph and how it is made: ONNX export wrapper, parity, manifest fields.

The exported graph has one input ``images`` [N, 3, S, S] (normalised RGB, see the manifest's
preprocessing) and two NMS-free outputs, described in the manifest's ``detection`` field:
``logits`` [N, Q, K] (per-class scores before a sigmoid) and ``boxes`` [N, Q, 4] (cx, cy, w, h in
0..1 of the input). A consumer takes sigmoid(logits), keeps the best (query, class) pairs and
scales boxes to its image: no NMS. Measured: the dynamo exporter bakes the example batch into
this model (``len()`` on a tensor in transformers), so we export with ``dynamo=False`` at opset 17
from a batch-2 example and refuse a graph whose batch dimension is not symbolic. Parity with
PyTorch is checked on real images at batch 1 and 3 with order-independent matching (Hungarian on
probabilities + boxes), so a reordering of equal-score queries is not a failure.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.export import (
    ManifestInfo,
    default_version,
    export_onnx,
    ort_session,
    write_labels,
    write_manifest,
)
from trainer.models.checkpoint import count_params
from trainer.tasks.detection.data import CocoDetection, CocoSplit, open_split
from trainer.tasks.detection.metrics import sigmoid
from trainer.tasks.detection.model import load_detector
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)

INPUT = "images"
OUTPUTS = ("logits", "boxes")


class ExportWrapper(nn.Module):
    """images -> (logits, boxes) of the final decoder layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(pixel_values=images)
        return out.logits, out.pred_boxes


def _images(
    spec: DetectionSpec, split: CocoSplit, n: int, offset: int = 0
) -> tuple[torch.Tensor, list[dict]]:
    ds = CocoDetection(split, spec.dataset.image_size, spec.dataset.mean, spec.dataset.std)
    idx = [(offset + i) % len(ds) for i in range(n)]
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), [t for _, t in items]


def matched_difference(
    torch_logits: np.ndarray, torch_boxes: np.ndarray, onnx_logits: np.ndarray, onnx_boxes: np.ndarray
) -> float:
    """Max |difference| of probabilities and boxes after matching ONNX queries to PyTorch queries
    one to one (Hungarian), per image: independent of the order of the queries."""
    from scipy.optimize import linear_sum_assignment

    if torch_logits.shape != onnx_logits.shape or torch_boxes.shape != onnx_boxes.shape:
        raise ValueError(f"output shapes differ: torch {torch_logits.shape} vs onnx {onnx_logits.shape}")
    worst = 0.0
    for i in range(torch_logits.shape[0]):
        a = np.concatenate([sigmoid(torch_logits[i]), torch_boxes[i]], 1)
        b = np.concatenate([sigmoid(onnx_logits[i]), onnx_boxes[i]], 1)
        cost = np.abs(a[:, None, :] - b[None, :, :]).sum(-1)
        r, c = linear_sum_assignment(cost)
        worst = max(worst, float(np.abs(a[r] - b[c]).max()))
    return worst


def _set_detection_fields(manifest_path: Path, category_ids: list[int]) -> None:
    from protos.manifest import load_manifest, save_manifest

    m = load_manifest(manifest_path)
    d = m.detection
    d.boxes_output, d.logits_output = "boxes", "logits"
    d.box_format, d.normalized, d.score_activation = "cxcywh", True, "sigmoid"
    m.lineage.details["category_ids"] = ",".join(str(c) for c in category_ids)
    m.lineage.details["decoding"] = "top-k over sigmoid(logits) of all (query, class) pairs; no NMS"
    save_manifest(m, manifest_path)


def export_detector(
    spec: DetectionSpec, ckpt: Path, out_dir: Path, *, onnx_name: str = "model.onnx"
) -> tuple[Path, Path, dict[str, Any]]:
    """Export the detection checkpoint ``ckpt`` to ``out_dir/onnx_name`` with ``manifest.json`` and
    ``labels.txt`` beside it, parity-checked on real val images; returns (onnx, manifest, metrics)."""
    loaded = load_detector(ckpt, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    model = ExportWrapper(loaded.model.eval())
    val = open_split(spec, "val")
    if loaded.config.image_size != spec.dataset.image_size:
        spec = spec.model_copy(deep=True)
        spec.dataset.image_size = loaded.config.image_size
    example, _ = _images(spec, val, 2)
    onnx_path = out_dir / onnx_name
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
    write_labels(out_dir / "labels.txt", loaded.labels)
    metrics = {
        **parity,
        "onnx_bytes": onnx_path.stat().st_size,
        "opset": spec.export.opset,
        "dynamic_batch": dynamic,
    }
    log.info("exported %s (%s)", onnx_path, metrics)
    return onnx_path, manifest_path, metrics
