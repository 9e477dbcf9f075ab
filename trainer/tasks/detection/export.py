"""export and quantize for detection: ONNX + manifest, on the trainer's export helpers.

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
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.data import CocoSplit
from trainer.tasks.detection.metrics import coco_map, decode, sigmoid, to_coco_results
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


class OnnxDetector:
    """An exported detector (model.onnx + manifest.json) on ONNX Runtime CPU."""

    def __init__(self, onnx_path: str | Path, threads: int = 0):
        from protos.manifest import load_manifest
        from trainer.export import ort_session

        self.path = Path(onnx_path)
        self.manifest = load_manifest(self.path.with_name("manifest.json"))
        if self.manifest.task != "detection":
            raise ValueError(f"{self.path}: manifest task is {self.manifest.task!r}, not detection")
        self.session = ort_session(self.path, threads)
        det = self.manifest.detection
        self.logits_name, self.boxes_name = det.logits_output or "logits", det.boxes_output or "boxes"
        self.input_name = self.manifest.inputs[0].name if self.manifest.inputs else INPUT
        p = self.manifest.preprocessing
        self.image_size, self.mean, self.std = int(p.height), list(p.mean), list(p.std)
        self.labels = list(self.manifest.labels)
        ids = self.manifest.lineage.details.get("category_ids", "")
        cats = [int(v) for v in ids.split(",")] if ids else list(range(1, len(self.labels) + 1))
        self.label_to_cat = dict(enumerate(cats))

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self.session.run(
            [self.logits_name, self.boxes_name], {self.input_name: batch.astype(np.float32)}
        )
        return out[0], out[1]


def _images(
    spec: DetectionSpec, split: CocoSplit, n: int, offset: int = 0
) -> tuple[torch.Tensor, list[dict]]:
    from trainer.tasks.detection.data import CocoDetection

    ds = CocoDetection(split, spec.dataset.image_size, spec.dataset.mean, spec.dataset.std)
    idx = [(offset + i) % len(ds) for i in range(n)]
    items = [ds[i] for i in idx]
    return torch.stack([x for x, _ in items]), [t for _, t in items]


def calibration_array(spec: DetectionSpec, split: CocoSplit, n: int) -> np.ndarray:
    """``n`` real images of ``split``, preprocessed as the model sees them, spread over the split."""
    from trainer.tasks.detection.data import CocoDetection

    ds = CocoDetection(split, spec.dataset.image_size, spec.dataset.mean, spec.dataset.std)
    n = min(n, len(ds))
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)
    return np.stack([ds[int(i)][0].numpy() for i in idx]).astype(np.float32)


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


def evaluate_onnx(
    onnx_path: str | Path,
    spec: DetectionSpec,
    split: CocoSplit,
    *,
    batch_size: int = 8,
    max_detections: int = 100,
    conf_threshold: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """COCO metrics of an exported model run by ONNX Runtime on ``split``."""
    from trainer.tasks.detection.train import loader

    det = OnnxDetector(onnx_path)
    if det.labels != split.labels:
        raise ValueError(f"model labels {det.labels} differ from the split's {split.labels}")
    if det.image_size != spec.dataset.image_size:
        spec = spec.model_copy(deep=True)
        spec.dataset.image_size = det.image_size
    dl = loader(spec, split, train=False, batch_size=batch_size)
    dets, ids = [], []
    for images, targets in dl:
        logits, boxes = det.run(images.numpy())
        sizes = np.stack([t["orig_size"].numpy() for t in targets])
        dets += decode(logits, boxes, sizes, max_detections=max_detections, conf_threshold=conf_threshold)
        ids += [int(t["image_id"]) for t in targets]
    results = to_coco_results(dets, ids, split.label_to_cat)
    return coco_map(split.coco, results), results


def _set_detection_fields(manifest_path: Path, category_ids: list[int]) -> None:
    from protos.manifest import load_manifest, save_manifest

    m = load_manifest(manifest_path)
    d = m.detection
    d.boxes_output, d.logits_output = "boxes", "logits"
    d.box_format, d.normalized, d.score_activation = "cxcywh", True, "sigmoid"
    m.lineage.details["category_ids"] = ",".join(str(c) for c in category_ids)
    m.lineage.details["decoding"] = "top-k over sigmoid(logits) of all (query, class) pairs; no NMS"
    save_manifest(m, manifest_path)


def export_action(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    from trainer.export import ManifestInfo, default_version, export_onnx, write_labels, write_manifest
    from trainer.models.checkpoint import count_params
    from trainer.tasks.detection.model import load_detector
    from trainer.tasks.detection.train import open_split

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
    from trainer.export import ort_session

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


# ------------------------------------------------------------------ quantize
class _Reader:
    """onnxruntime CalibrationDataReader over an array of preprocessed images."""

    def __init__(self, name: str, data: np.ndarray, batch: int = 8):
        self.name, self.data, self.batch, self._i = name, data, batch, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self.data):
            return None
        out = {self.name: self.data[self._i : self._i + self.batch]}
        self._i += self.batch
        return out

    def rewind(self) -> None:
        self._i = 0


def quantize_qdq(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    conv_only: bool = False,
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
) -> Path:
    """INT8 Q/DQ (ONNX Runtime's recipe for x86: uint8 activations, int8 per-channel weights).
    ``quant_pre_process`` runs with ``skip_symbolic_shape=True`` (its symbolic shape inference
    fails on this graph)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        extra: dict[str, Any] = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True}
        if method == "percentile":
            extra["CalibPercentile"] = 99.99
        quantize_static(
            str(pre),
            str(out_path),
            _Reader(INPUT, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=types[activation_type],
            weight_type=types[weight_type],
            per_channel=per_channel,
            calibrate_method=methods[method],
            op_types_to_quantize=["Conv"] if conv_only else None,
            extra_options=extra,
        )
    return out_path


def quantize_action(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    import shutil

    from protos.manifest import load_manifest, save_manifest, sha256_file
    from trainer.tasks.detection.train import open_split

    cfg = spec.quantize
    if cfg.mode.value != "ptq":
        raise ValueError("quantize.mode=qat is not available for detection (needs nvidia-modelopt); use ptq")
    fp32 = Path(cfg.checkpoint or ctx.default_checkpoint("export", "model.onnx"))
    if fp32.suffix != ".onnx":
        raise ValueError(
            f"quantize.checkpoint must be an exported model.onnx (with manifest.json), got {fp32}"
        )
    src_manifest = load_manifest(fp32.with_name("manifest.json"))
    if src_manifest.preprocessing.height != spec.dataset.image_size:
        spec = spec.model_copy(deep=True)
        spec.dataset.image_size = int(src_manifest.preprocessing.height)
    calib = calibration_array(spec, open_split(spec, cfg.calibration_split), cfg.num_calibration_samples)
    out = ctx.out_dir / "model.onnx"
    quantize_qdq(
        fp32,
        out,
        calib,
        conv_only=cfg.scope.value == "conv_only",
        method=cfg.calibrate_method.value,
        per_channel=cfg.per_channel,
        activation_type=cfg.activation_type,
        weight_type=cfg.weight_type,
    )
    m = src_manifest
    m.sha256, m.size_bytes, m.onnx_file, m.precision = (
        sha256_file(out),
        out.stat().st_size,
        out.name,
        "int8-qdq",
    )
    m.lineage.parent_version = src_manifest.version
    m.version = f"{src_manifest.version}-int8"
    m.lineage.action = "quantize"
    m.lineage.quantization = "int8-qdq-ptq"
    m.lineage.history.append("quantize")
    m.lineage.details["quant_scope"] = cfg.scope.value
    m.lineage.details["calibration_samples"] = str(len(calib))
    metrics: dict[str, Any] = {
        "calibration_samples": len(calib),
        "scope": cfg.scope.value,
        "onnx_bytes": out.stat().st_size,
        "fp32_onnx_bytes": fp32.stat().st_size,
    }
    manifest_path = ctx.out_dir / "manifest.json"
    save_manifest(m, manifest_path)
    if cfg.evaluate:
        test = open_split(spec, "test")
        q_metrics, _ = evaluate_onnx(out, spec, test)
        f_metrics, _ = evaluate_onnx(fp32, spec, test)
        metrics.update(
            {
                "map": q_metrics["map"],
                "map50": q_metrics["map50"],
                "fp32_map": f_metrics["map"],
                "map_drop_points": round(100 * (f_metrics["map"] - q_metrics["map"]), 3),
            }
        )
        m.metrics["map"], m.metrics["map50"] = q_metrics["map"], q_metrics["map50"]
        save_manifest(m, manifest_path)
    if (fp32.parent / "labels.txt").is_file():
        shutil.copy(fp32.parent / "labels.txt", ctx.out_dir / "labels.txt")
    return ActionOutput(metrics=metrics, onnx_path=out, manifest_path=manifest_path)
