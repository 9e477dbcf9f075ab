"""The ONNX Runtime static INT8 recipe, in one place: the trainer's quantize actions (both tasks)
and the agent's ONNX Runtime backend call :func:`quantize_static_qdq`. Torch-free;
``onnxruntime`` is imported when a model is quantized.

The recipe, measured fastest for ONNX Runtime on x86 CPUs: Q/DQ format, uint8 asymmetric
activations, int8 symmetric per-channel weights, ORT's ``quant_pre_process`` first (shape
inference + graph optimisation: folds BatchNorm, better Q/DQ placement; skipped with a warning
when it fails, since it is an optimisation, not a requirement). ``tensorrt=True`` gives the
recipe TensorRT wants instead (what Optimum's TensorRT config does): symmetric int8 everywhere, a
Q/DQ pair on every weight and one per consumer, bias left in float, only the op types TensorRT
runs in INT8. Percentile calibration keeps the 99.99th percentile.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import sys
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

METHODS = ("minmax", "entropy", "percentile")
TYPES = ("uint8", "int8")
TRT_QDQ_OPS = ["Conv", "ConvTranspose", "Gemm", "MatMul", "MaxPool", "AveragePool", "GlobalAveragePool",
               "Add", "Concat", "Resize", "Relu", "Clip", "Reshape", "Transpose", "Flatten"]  # fmt: skip
TRT_QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": True,
    "QuantizeBias": False,
}
PERCENTILE = 99.99


def array_feeds(input_name: str, data: np.ndarray, batch: int = 8) -> Iterator[dict[str, np.ndarray]]:
    """Calibration feeds from an NCHW (or NHWC) float array, ``batch`` samples at a time."""
    data = data.astype(np.float32)
    for i in range(0, len(data), batch):
        yield {input_name: data[i : i + batch]}


class _Reader:
    """ORT's ``CalibrationDataReader`` over an iterator of feeds; counts the samples it gave.
    One pass is all we give (``rewind`` is a no-op: ORT >= 1.17 may call it)."""

    def __init__(self, feeds: Iterable[dict[str, np.ndarray]]) -> None:
        self._feeds = iter(feeds)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._feeds, None)
        if batch is not None:
            self.count += int(next(iter(batch.values())).shape[0])
        return batch

    def rewind(self) -> None:
        pass


def first_input_name(path: str | Path) -> str:
    """The first non-initializer input of the graph (what calibration arrays feed)."""
    from protos.onnx_io import read_specs

    inputs, _ = read_specs(path)
    if not inputs:
        raise ValueError(f"{Path(path).name} has no graph inputs to calibrate")
    return inputs[0].name


def quantize_static_qdq(
    src: str | Path,
    dst: str | Path,
    feeds: Iterable[dict[str, np.ndarray]],
    *,
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    op_types: list[str] | None = None,
    tensorrt: bool = False,
    symbolic_shape_inference: bool = False,
) -> int:
    """Static Q/DQ quantization of ``src`` into ``dst`` calibrated on ``feeds``; returns the
    number of calibration samples seen. ``symbolic_shape_inference`` turns on that step of the
    pre-processing (it fails on some graphs, RT-DETR's among them)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; choose one of {list(METHODS)}")
    if activation_type not in TYPES or weight_type not in TYPES:
        raise ValueError(f"activation/weight types must be one of {list(TYPES)}")
    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    if tensorrt:
        activation_type, weight_type = "int8", "int8"
        extra: dict[str, Any] = dict(TRT_QDQ_OPTIONS)
        op_types = op_types or TRT_QDQ_OPS
    else:
        extra = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True}
    if method == "percentile":
        extra["CalibPercentile"] = PERCENTILE
    reader = _Reader(feeds)
    with tempfile.TemporaryDirectory(prefix="edgeloop-quant-") as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        try:
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=not symbolic_shape_inference)
        except Exception as exc:  # an optimisation, not a requirement
            log.warning("quantization pre-processing skipped (%s); quantizing the graph as exported", exc)
            shutil.copyfile(src, prepared)
        # the quantizer prints progress to stdout, which the agent keeps for results (JSON, tables)
        with contextlib.redirect_stdout(sys.stderr):
            quantize_static(
                str(prepared),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                activation_type=types[activation_type],
                weight_type=types[weight_type],
                per_channel=per_channel,
                calibrate_method=methods[method],
                op_types_to_quantize=op_types,
                extra_options=extra,
            )
    return reader.count
