"""Turn any ONNX vision model into a complete manifest: ours, or one made elsewhere.

With a manifest, it is checked against the ONNX (sha256, input/output names) and gaps are filled
from the graph. Without one, a manifest is inferred from the graph (names, dtypes, shapes,
layout guessed from the channel dimension) with ImageNet preprocessing, and the caller gets the
warnings to show the user: a guessed preprocessing gives plausible but wrong accuracy.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import ArtifactError
from protos import artifact_pb2
from protos.manifest import ManifestError, load_manifest, sha256_file
from protos.onnx_io import OnnxReadError, graph_specs, load_graph, opset_of, verify_onnx_matches

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = 224


@dataclass
class ResolvedModel:
    """An ONNX file with a manifest that is complete and consistent with it."""

    onnx_path: Path
    manifest: artifact_pb2.Manifest
    warnings: list[str] = field(default_factory=list)
    manifest_given: bool = True


def image_size(spec: artifact_pb2.TensorSpec) -> tuple[int, int]:
    """(height, width) of an image input; DEFAULT_SIZE where the graph leaves it dynamic."""
    shape = list(spec.shape)
    if len(shape) != 4:
        return DEFAULT_SIZE, DEFAULT_SIZE
    h, w = (shape[2], shape[3]) if (spec.layout or "NCHW") == "NCHW" else (shape[1], shape[2])
    return (h if h > 0 else DEFAULT_SIZE), (w if w > 0 else DEFAULT_SIZE)


def _default_preprocessing(spec: artifact_pb2.TensorSpec) -> artifact_pb2.Preprocessing:
    h, w = image_size(spec)
    raw = spec.dtype == "uint8"
    return artifact_pb2.Preprocessing(
        height=h,
        width=w,
        resize_mode="stretch",
        interpolation="bilinear",
        color_order="RGB",
        scale=1.0 if raw else 1 / 255,
        mean=[] if raw else list(IMAGENET_MEAN),
        std=[] if raw else list(IMAGENET_STD),
    )


def resolve_model(
    onnx_path: str | Path,
    manifest: artifact_pb2.Manifest | str | Path | None = None,
    *,
    verify_sha256: bool = True,
) -> ResolvedModel:
    """Load ``onnx_path`` with its manifest (object, path, or ``manifest.json`` beside it when
    None), fill what the manifest leaves out from the graph, and refuse inconsistencies."""
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise ArtifactError(f"ONNX model not found: {onnx_path}")
    warnings: list[str] = []
    given = True
    if manifest is None and (onnx_path.parent / "manifest.json").is_file():
        manifest = onnx_path.parent / "manifest.json"
    if isinstance(manifest, str | Path):
        try:
            manifest = load_manifest(manifest)
        except ManifestError as exc:
            raise ArtifactError(str(exc)) from exc
    actual_sha = sha256_file(onnx_path)
    if manifest is not None and verify_sha256:  # before parsing: a truncated file is named as such
        if not manifest.sha256:
            raise ArtifactError("manifest has no sha256; refusing to trust the ONNX file")
        if manifest.sha256 != actual_sha:
            raise ArtifactError(
                f"sha256 mismatch: manifest says {manifest.sha256[:12]}…, {onnx_path.name} is "
                f"{actual_sha[:12]}… (corrupt or truncated artifact; refused)"
            )
    try:
        model = load_graph(onnx_path)
    except OnnxReadError as exc:
        raise ArtifactError(f"{onnx_path}: {exc}") from exc
    inputs, outputs = graph_specs(model)
    if manifest is None:
        given = False
        manifest = artifact_pb2.Manifest(
            schema_version=1,
            name=onnx_path.stem,
            version=f"{onnx_path.stem}:{actual_sha[:12]}",
            task="classification" if len(outputs) == 1 and len(outputs[0].shape) == 2 else "",
            onnx_file=onnx_path.name,
            precision="int8-qdq"
            if any(n.op_type == "QuantizeLinear" for n in model.graph.node)
            else "fp16"
            if inputs and inputs[0].dtype == "float16"
            else "fp32",
            opset=opset_of(model),
        )
        warnings.append(
            "no manifest given: inputs/outputs read from the graph, preprocessing assumed "
            "(RGB, stretch resize, x/255, ImageNet mean/std); accuracy numbers are only as right as "
            "that guess - pass --manifest M.json to be exact"
        )
    else:
        manifest = _copy(manifest)
        try:
            verify_onnx_matches(manifest, inputs, outputs)
        except ManifestError as exc:
            raise ArtifactError(str(exc)) from exc
    manifest.sha256 = actual_sha
    manifest.size_bytes = onnx_path.stat().st_size
    graph_in = {s.name: s for s in inputs}
    if manifest.inputs:
        for t in manifest.inputs:  # the graph is the truth for dtype; keep the manifest's layout
            if not t.dtype:
                t.dtype = graph_in[t.name].dtype
            if not t.shape:
                t.shape[:] = graph_in[t.name].shape
            if not t.layout:
                t.layout = graph_in[t.name].layout
        named = {t.name for t in manifest.inputs}
        manifest.inputs.extend(s for s in inputs if s.name not in named)  # every graph input is required
    else:
        manifest.inputs.extend(inputs)
    if not manifest.outputs:
        manifest.outputs.extend(outputs)
    image_inputs = [t for t in manifest.inputs if t.layout in ("NCHW", "NHWC")]
    if not manifest.HasField("preprocessing") and image_inputs:
        manifest.preprocessing.CopyFrom(_default_preprocessing(image_inputs[0]))
        if given:
            warnings.append("manifest has no preprocessing: assuming ImageNet preprocessing")
    if len(image_inputs) != len(manifest.inputs):
        others = [t.name for t in manifest.inputs if t not in image_inputs]
        warnings.append(
            f"inputs {others} are not images: calibration/evaluation fill them with zeros; "
            "live inference takes them from the request"
        )
    for w in warnings:
        log.warning("%s: %s", onnx_path.name, w)
    return ResolvedModel(onnx_path=onnx_path, manifest=manifest, warnings=warnings, manifest_given=given)


def _copy(manifest: artifact_pb2.Manifest) -> artifact_pb2.Manifest:
    out = artifact_pb2.Manifest()
    out.CopyFrom(manifest)
    return out
