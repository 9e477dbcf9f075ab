"""``quantize``: INT8 Q/DQ ONNX of an exported model.onnx or of a .pth (exported first, as
``model_fp32.onnx``), calibrated on real images; mAP drop reported."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from protos.manifest import load_manifest, save_manifest, sha256_file
from protos.ort_int8 import array_feeds, quantize_static_qdq
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.data import calibration_array, open_split
from trainer.tasks.detection.export import INPUT, export_detector
from trainer.tasks.detection.predict import evaluate_onnx
from trainer.tasks.detection.spec import DetectionSpec


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """INT8 Q/DQ ONNX with real calibration images; mAP drop reported."""
    cfg = spec.quantize
    fp32 = Path(cfg.checkpoint or ctx.default_checkpoint("export", "model.onnx"))
    if fp32.suffix != ".onnx":  # a detection model.pth: export it first, as the export action does
        fp32, _, _ = export_detector(spec, fp32, ctx.out_dir, onnx_name="model_fp32.onnx")
    src_manifest = load_manifest(fp32.with_name("manifest.json"))
    if src_manifest.preprocessing.height != spec.dataset.image_size:
        spec = spec.model_copy(deep=True)
        spec.dataset.image_size = int(src_manifest.preprocessing.height)
    calib = calibration_array(spec, open_split(spec, cfg.calibration_split), cfg.num_calibration_samples)
    out = ctx.out_dir / "model.onnx"
    # symbolic shape inference fails on this graph: ort_int8's default skips it
    quantize_static_qdq(
        fp32,
        out,
        array_feeds(INPUT, calib),
        op_types=["Conv"] if cfg.scope.value == "conv_only" else None,
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
    if fp32.parent != ctx.out_dir and (fp32.parent / "labels.txt").is_file():
        shutil.copy(fp32.parent / "labels.txt", ctx.out_dir / "labels.txt")
    return ActionOutput(metrics=metrics, onnx_path=out, manifest_path=manifest_path)
