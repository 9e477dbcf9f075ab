"""ONNX export, parity check against PyTorch, and the artifact manifest (shared by every task).

Export uses the TorchScript exporter (``dynamo=False``) at a pinned opset: torch 2.14's default
dynamo exporter targets opset 20 and its dynamic-shape handling differs between versions,
while ``dynamo=False`` with ``dynamic_axes`` gives a symbolic batch dimension on torch 2.9-2.14
alike, and is also what Q/DQ export needs. The exported graph is checked: the batch dimension
must be symbolic (``dim_param``) when a dynamic batch was asked for.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    pass


def export_onnx(
    model: nn.Module,
    example: torch.Tensor,
    path: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    input_names: Sequence[str] = ("input",),
    output_names: Sequence[str] = ("logits",),
) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().to("cpu").to(memory_format=torch.contiguous_format)
    example = example.to("cpu").contiguous()
    dynamic_axes = {n: {0: "batch"} for n in [*input_names, *output_names]} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # dynamo=False is deprecated in 2.14 but is the reliable path
        torch.onnx.export(
            model,
            (example,),
            str(path),
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    graph = onnx.load(str(path))
    onnx.checker.check_model(graph)
    if dynamic_batch:
        for value in [*graph.graph.input, *graph.graph.output]:
            dim0 = value.type.tensor_type.shape.dim[0]
            if not dim0.dim_param:
                raise ExportError(f"exported {value.name} has a fixed batch dimension {dim0.dim_value}")
    return path


def ort_session(path: str | Path, threads: int = 0):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def parity_check(path: str | Path, model: nn.Module, batch: torch.Tensor) -> tuple[float, float]:
    """(max |ORT - PyTorch|, max |PyTorch|) over the outputs for a real batch (this also runs a
    batch size other than the export example's when ``batch`` has several images)."""
    model = model.eval().to("cpu")
    with torch.no_grad():
        ref = model(batch.contiguous()).float().numpy()
    sess = ort_session(path)
    got = sess.run(None, {sess.get_inputs()[0].name: batch.numpy().astype(np.float32)})[0]
    if got.shape != ref.shape:
        raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape}")
    return float(np.max(np.abs(got - ref))), float(np.max(np.abs(ref)))


@dataclass
class ManifestInfo:
    name: str
    version: str
    task: str
    labels: Sequence[str]
    image_size: int
    mean: Sequence[float]
    std: Sequence[float]
    precision: str
    opset: int
    backbone: str = ""
    metrics: dict[str, float] | None = None
    lineage: dict[str, Any] | None = None
    complexity: dict[str, float] | None = None


def default_version(name: str, action: str) -> str:
    return f"{name}:{action}-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"


def write_manifest(
    onnx_path: str | Path, info: ManifestInfo, manifest_path: str | Path | None = None
) -> Path:
    """Write ``manifest.json`` beside the ONNX file (proto3 JSON of protos/artifact.proto)."""
    from protos.manifest import SCHEMA_VERSION, Manifest, save_manifest, sha256_file
    from protos.onnx_io import read_specs

    onnx_path = Path(onnx_path)
    manifest_path = Path(manifest_path) if manifest_path else onnx_path.with_name("manifest.json")
    inputs, outputs = read_specs(onnx_path)
    m = Manifest(
        schema_version=SCHEMA_VERSION,
        name=info.name,
        version=info.version,
        task=info.task,
        labels=list(info.labels),
        sha256=sha256_file(onnx_path),
        onnx_file=onnx_path.name,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        precision=info.precision,
        opset=int(info.opset),
        backbone=info.backbone,
        size_bytes=onnx_path.stat().st_size,
    )
    m.inputs.extend(inputs)
    m.outputs.extend(outputs)
    p = m.preprocessing
    p.height = p.width = int(info.image_size)
    p.resize_mode = "stretch"
    p.interpolation = "bilinear"
    p.color_order = "RGB"
    p.scale = 1.0 / 255.0
    p.mean.extend(float(v) for v in info.mean)
    p.std.extend(float(v) for v in info.std)
    for k, v in (info.metrics or {}).items():
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            m.metrics[k] = float(v)
    for k, v in (info.complexity or {}).items():
        m.complexity[k] = float(v)
    lin = info.lineage or {}
    m.lineage.parent_version = str(lin.get("parent_version", ""))
    m.lineage.action = str(lin.get("action", ""))
    m.lineage.prune_ratio = float(lin.get("prune_ratio", 0.0) or 0.0)
    m.lineage.teacher = str(lin.get("teacher", "") or "")
    m.lineage.quantization = str(lin.get("quantization", "") or "")
    m.lineage.history.extend(str(h) for h in lin.get("history", []))
    for k, v in (lin.get("details") or {}).items():
        m.lineage.details[str(k)] = str(v)
    save_manifest(m, manifest_path)
    return manifest_path


def write_labels(path: str | Path, labels: Sequence[str]) -> Path:
    path = Path(path)
    path.write_text("\n".join(labels) + "\n", encoding="utf-8")
    return path
