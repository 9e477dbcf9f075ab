"""Reading an ONNX graph's interface, and checking a manifest against it: one set of rules for
the trainer (writing manifests), the controller (importing models) and the agent (resolving
what it serves). Torch-free; ``onnx`` is imported when a graph is read.

The rules:

- an input is a graph input that is not an initializer; outputs are the graph outputs;
- a dimension is its fixed size when positive, else -1 (symbolic, unknown or 0);
- a dtype is numpy's name for the element type (``float32``, ``uint8`` ...); an undefined
  element type reads as ``float32``;
- a rank-4 tensor's layout is ``NHWC`` when only its last dimension looks like channels
  (1, 3 or 4), else ``NCHW``; other ranks have no layout;
- a manifest contradicts its graph when it names an input or output the graph lacks, or gives
  one a dtype, rank or fixed dimension the graph says otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from protos import artifact_pb2
from protos.manifest import ManifestError

if TYPE_CHECKING:
    import onnx

TensorSpecs = list[artifact_pb2.TensorSpec]


class OnnxReadError(ValueError):
    """A file that is not a readable ONNX model; the message names the file."""


def load_graph(path: str | Path) -> onnx.ModelProto:
    """The model at ``path`` without its external data (the interface is all we read)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError and friends
        raise OnnxReadError(f"{Path(path).name} is not an ONNX model: {exc}") from exc
    if not model.graph.node:
        raise OnnxReadError(f"{Path(path).name} is not an ONNX model: the graph has no nodes")
    return model


def guess_layout(shape: list[int]) -> str:
    """NCHW / NHWC from where the 1/3/4-channel dimension sits; "" when not rank 4."""
    if len(shape) != 4:
        return ""
    if shape[3] in (1, 3, 4) and shape[1] not in (1, 3, 4):
        return "NHWC"
    return "NCHW"


def _spec(value_info: Any) -> artifact_pb2.TensorSpec:
    from onnx import helper

    t = value_info.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in t.shape.dim]
    dtype = helper.tensor_dtype_to_np_dtype(t.elem_type).name if t.elem_type else "float32"
    return artifact_pb2.TensorSpec(name=value_info.name, dtype=dtype, shape=dims, layout=guess_layout(dims))


def graph_specs(model: onnx.ModelProto) -> tuple[TensorSpecs, TensorSpecs]:
    """(inputs, outputs) of a loaded model as manifest tensor specs."""
    initializers = {i.name for i in model.graph.initializer}
    inputs = [_spec(v) for v in model.graph.input if v.name not in initializers]
    return inputs, [_spec(v) for v in model.graph.output]


def read_specs(path: str | Path) -> tuple[TensorSpecs, TensorSpecs]:
    """(inputs, outputs) of the ONNX file at ``path``."""
    return graph_specs(load_graph(path))


def opset_of(model: onnx.ModelProto) -> int:
    """The default-domain opset the model was exported with (0 when it names none)."""
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _contradictions(kind: str, declared: TensorSpecs, graph: TensorSpecs) -> list[str]:
    by_name = {s.name: s for s in graph}
    problems = []
    unknown = [t.name for t in declared if t.name not in by_name]
    if unknown:
        problems.append(f"manifest {kind}s {unknown} are not {kind}s of the ONNX graph {sorted(by_name)}")
    for t in declared:
        g = by_name.get(t.name)
        if g is None:
            continue
        if t.dtype and g.dtype and t.dtype != g.dtype:
            problems.append(f"{kind} {t.name!r}: manifest dtype {t.dtype}, graph {g.dtype}")
        if t.shape and g.shape:
            if len(t.shape) != len(g.shape):
                problems.append(f"{kind} {t.name!r}: manifest shape {list(t.shape)}, graph {list(g.shape)}")
            elif any(a > 0 and b > 0 and a != b for a, b in zip(t.shape, g.shape, strict=True)):
                problems.append(f"{kind} {t.name!r}: manifest shape {list(t.shape)}, graph {list(g.shape)}")
    return problems


def verify_onnx_matches(manifest: artifact_pb2.Manifest, inputs: TensorSpecs, outputs: TensorSpecs) -> None:
    """Refuse a manifest whose inputs/outputs contradict the graph's (``graph_specs``): every
    contradiction is named in one :class:`ManifestError`. Fields the manifest leaves empty are
    not contradictions (the caller fills them from the graph)."""
    problems = _contradictions("input", list(manifest.inputs), inputs)
    problems += _contradictions("output", list(manifest.outputs), outputs)
    if problems:
        raise ManifestError("manifest contradicts the ONNX graph: " + "; ".join(problems))
