"""INT8 post-training quantization of an FP32 ONNX model with ONNX Runtime (static, Q/DQ).

The recipe defaults are the ones measured fastest for ONNX Runtime on x86 CPUs (docs/trainer.md):
Q/DQ format, uint8 activations, int8 per-channel weights. (TensorRT wants symmetric int8 Q/DQ
instead; that is why the fleet also gets the FP32 model and a calibration shard and each device
quantizes for its own backend.) The graph is first run through ORT's ``quant_pre_process``
(shape inference + graph optimisation), which folds BatchNorm and makes better Q/DQ placement.

Quantization-aware training is not done here (``quantize.mode=qat`` is refused by the spec):
only NVIDIA ModelOpt produced a working QAT Q/DQ ONNX in our checks, and it is not a dependency.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class ArrayCalibrationReader:
    """CalibrationDataReader over an NCHW float32 array, fed in small batches."""

    def __init__(self, input_name: str, data: np.ndarray, batch: int = 8):
        self.input_name = input_name
        self.data = data.astype(np.float32)
        self.batch = batch
        self._it: Iterator[dict[str, np.ndarray]] | None = None

    def _gen(self) -> Iterator[dict[str, np.ndarray]]:
        for i in range(0, len(self.data), self.batch):
            yield {self.input_name: self.data[i : i + self.batch]}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._gen()
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = None


def quantize_static_qdq(
    fp32_path: str | Path,
    out_path: str | Path,
    calibration: np.ndarray,
    *,
    method: str = "minmax",
    per_channel: bool = True,
    activation_type: str = "uint8",
    weight_type: str = "int8",
) -> Path:
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
        try:
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
            src = pre
        except Exception as exc:  # pre-processing is an optimisation, not a requirement
            log.warning("quant_pre_process failed (%s); quantizing the graph as exported", exc)
            src = Path(fp32_path)
        import onnxruntime as ort

        input_name = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"]).get_inputs()[0].name
        extra = {"ActivationSymmetric": activation_type == "int8", "WeightSymmetric": True}
        if method == "percentile":
            extra["CalibPercentile"] = 99.99
        quantize_static(
            str(src),
            str(out_path),
            ArrayCalibrationReader(input_name, calibration),
            quant_format=QuantFormat.QDQ,
            activation_type=types[activation_type],
            weight_type=types[weight_type],
            per_channel=per_channel,
            calibrate_method=methods[method],
            extra_options=extra,
        )
    return out_path
