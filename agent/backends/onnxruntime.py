"""ONNX Runtime backend: CPU execution provider with thread settings; CUDA (and ORT's TensorRT)
execution providers when the installed build has them.

Precisions:
- fp32: the ONNX as given.
- fp16: the graph converted to float16 with ONNX Runtime's own converter (inputs and outputs stay
  float32, so clients do not change); on CPU it runs but few kernels are native FP16.
- int8: an ONNX that already holds Q/DQ nodes runs as is; a plain model is quantized *on the
  device* with ONNX Runtime's static Q/DQ quantizer, calibrated on images preprocessed with the
  manifest: uint8 activations, int8 per-channel weights (the recipe that is fast on x86 CPUs,
  measured in docs/agent.md), the calibration data supplied through ``BuildOptions.calibration``.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx

from agent.backends.base import (
    Availability,
    Backend,
    BuildInfo,
    BuildOptions,
    Engine,
    Precision,
    TensorInfo,
    usable_cores,
)
from agent.errors import BackendUnavailable, BuildError, CalibrationError, InvalidInput
from protos import artifact_pb2, fleet_pb2, ort_int8

log = logging.getLogger(__name__)

ENGINE_FILE = "model.onnx"

_ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


def has_qdq(model: onnx.ModelProto) -> bool:
    """True when the graph already carries explicit quantization (Q/DQ nodes)."""
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)


def _providers_for(device: str, precision: Precision = Precision.FP32, cache_dir: Path | None = None) -> list:
    """Execution providers for a device: CPU; or on ``gpu:N`` ORT's TensorRT EP (when the build
    has it; its own engine cache inside our cache entry) then CUDA, with CPU for the rest."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device.startswith("gpu"):
        index = int(device.partition(":")[2] or 0)
        if "CUDAExecutionProvider" not in available:
            raise BackendUnavailable(f"this onnxruntime build has no CUDA execution provider ({available})")
        providers: list = []
        if "TensorrtExecutionProvider" in available and cache_dir is not None:
            providers.append((
                "TensorrtExecutionProvider",
                {
                    "device_id": index,
                    "trt_fp16_enable": precision is Precision.FP16,
                    "trt_engine_cache_enable": True,
                    "trt_engine_cache_path": str(cache_dir / "ort-tensorrt"),
                    "trt_timing_cache_enable": True,
                },
            ))  # fmt: skip
        providers += [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        return providers
    raise BackendUnavailable(f"onnxruntime cannot run on device {device!r}")


def quantize_qdq(
    src: Path,
    dst: Path,
    options: BuildOptions,
    *,
    symmetric_activations: bool = False,
) -> tuple[float, int]:
    """Static Q/DQ quantization of ``src`` into ``dst``; returns (seconds, samples seen).

    The recipe is ``protos.ort_int8`` (shared with the trainer): uint8 asymmetric activations,
    int8 symmetric per-channel weights; ``symmetric_activations=True`` gives the int8/int8
    symmetric recipe TensorRT wants.
    """
    if options.calibration is None:
        raise CalibrationError(
            "INT8 for a model without Q/DQ nodes needs calibration images (--calib DIR, or a "
            "calibration shard in the deploy command)"
        )
    if options.calibration_method not in ort_int8.METHODS:
        raise CalibrationError(
            f"unknown calibration method {options.calibration_method!r}; {sorted(ort_int8.METHODS)}"
        )
    start = time.perf_counter()
    try:
        count = ort_int8.quantize_static_qdq(
            src,
            dst,
            options.calibration(),
            method=options.calibration_method,
            tensorrt=symmetric_activations,
        )
    except CalibrationError:
        raise
    except Exception as exc:
        raise BuildError(f"INT8 quantization failed: {exc}") from exc
    if count == 0:
        raise CalibrationError("the calibration data yielded no samples")
    return time.perf_counter() - start, count


def convert_fp16(src: Path, dst: Path) -> None:
    """Float16 weights and activations, float32 inputs/outputs (clients keep sending fp32)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(dst))


def _rss() -> int:
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        return 0


def cpu_runs_at_once(threads: int | None) -> int:
    """Runs a CPU session admits at once: as many as its intra-op pools fit in the cores.

    One run's intra-op pool uses every thread it was given, so runs beyond ``cores // threads``
    only fight over cores (and spinning workers wait for each other's). With the runtime's
    default threads (every core) that is one run at a time: concurrent requests queue here
    while their bytes are received and decoded, which overlaps transport with compute. An
    engine built with one thread on two cores runs two batches at once, which a caller that
    keeps two in flight (the video pipeline's ``batching.inflight``) turns into twice the
    engine's images/s. ``InferenceSession.run`` is thread-safe: the limit is about cores only.
    """
    return max(1, usable_cores() // threads) if threads else 1


class OnnxRuntimeEngine(Engine):
    backend = "onnxruntime"

    def __init__(self, model_path: Path, options: BuildOptions, manifest: artifact_pb2.Manifest) -> None:
        import onnxruntime as ort

        self.precision = options.precision
        self.device = options.device
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.inter_op_num_threads = 1
        if options.threads:
            so.intra_op_num_threads = options.threads
        before = _rss()
        try:
            self.session = ort.InferenceSession(
                str(model_path),
                sess_options=so,
                providers=_providers_for(options.device, options.precision, model_path.parent),
            )
        except BackendUnavailable:
            raise
        except Exception as exc:
            raise BuildError(f"onnxruntime could not load {model_path.name}: {exc}") from exc
        self._memory = max(_rss() - before, model_path.stat().st_size)
        layouts = {t.name: t.layout for t in manifest.inputs}
        self._inputs = [self._info(a, layouts.get(a.name, "")) for a in self.session.get_inputs()]
        self._outputs = [self._info(a, "") for a in self.session.get_outputs()]
        self._output_names = [o.name for o in self._outputs]
        # a GPU session queues runs on its own stream: not limited here
        self._concurrency = cpu_runs_at_once(options.threads) if options.device == "cpu" else None
        self._admit = threading.BoundedSemaphore(self._concurrency) if self._concurrency else None

    @staticmethod
    def _info(arg, layout: str) -> TensorInfo:
        dtype = _ORT_TYPES.get(arg.type)
        if dtype is None:
            raise BuildError(f"tensor {arg.name!r} has unsupported type {arg.type}")
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (arg.shape or []))
        return TensorInfo(arg.name, np.dtype(dtype), shape, layout)

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def concurrency(self) -> int | None:
        return self._concurrency

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            if self._admit is not None:
                with self._admit:
                    results = self.session.run(self._output_names, dict(feeds))
            else:
                results = self.session.run(self._output_names, dict(feeds))
        except Exception as exc:  # ORT raises its own types for bad shapes/dtypes
            name = type(exc).__name__
            if name in ("InvalidArgument", "Fail") or "INVALID_ARGUMENT" in str(exc):
                raise InvalidInput(f"onnxruntime refused the input: {exc}") from exc
            raise
        return dict(zip(self._output_names, results, strict=True))

    def memory_bytes(self) -> int:
        return int(self._memory)

    def close(self) -> None:
        self.session = None


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def availability(self) -> Availability:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            return Availability(False, f"onnxruntime is not installed ({exc})")
        return Availability(True, "", ort.__version__)

    def runtime_version(self) -> str:
        import onnxruntime as ort

        return ort.__version__

    def capabilities(self, profile: fleet_pb2.HardwareProfile) -> list[fleet_pb2.Capability]:
        avail = self.availability()
        if not avail.available:
            return [
                fleet_pb2.Capability(backend=self.name, precision=p.value, device="cpu", reason=avail.reason)
                for p in Precision
            ]
        import onnxruntime as ort

        providers = ort.get_available_providers()
        flags = set(profile.cpu_flags)
        vnni = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"} & flags
        caps = [
            fleet_pb2.Capability(backend=self.name, precision="fp32", device="cpu", available=True),
            fleet_pb2.Capability(
                backend=self.name,
                precision="fp16",
                device="cpu",
                available=True,
                reason="runs, but the CPU provider has few native FP16 kernels: expect it slower than fp32",
            ),
            fleet_pb2.Capability(
                backend=self.name,
                precision="int8",
                device="cpu",
                available=True,
                reason="" if vnni else "no VNNI/dot-product instructions: INT8 may be slower than fp32",
            ),
        ]
        if "CUDAExecutionProvider" in providers:
            for gpu in profile.gpus:
                for p in Precision:
                    caps.append(
                        fleet_pb2.Capability(
                            backend=self.name, precision=p.value, device=f"gpu:{gpu.index}", available=True
                        )
                    )
        return caps

    def build(
        self, onnx_path: Path, manifest: artifact_pb2.Manifest, options: BuildOptions, out_dir: Path
    ) -> BuildInfo:
        start = time.perf_counter()
        dst = out_dir / ENGINE_FILE
        info = BuildInfo(files=[ENGINE_FILE])
        try:
            model = onnx.load(str(onnx_path), load_external_data=False)
        except Exception as exc:
            raise BuildError(f"not a readable ONNX model: {onnx_path}: {exc}") from exc
        if options.precision is Precision.FP32:
            shutil.copyfile(onnx_path, dst)
        elif options.precision is Precision.FP16:
            convert_fp16(onnx_path, dst)
        elif has_qdq(model):
            info.notes.append("the model already holds Q/DQ nodes: run as is, no calibration")
            shutil.copyfile(onnx_path, dst)
        else:
            info.calibration_time_s, samples = quantize_qdq(onnx_path, dst, options)
            info.notes.append(f"calibrated on {samples} samples ({options.calibration_method})")
        # Load once here so a model this runtime cannot run fails the build, not the first request.
        OnnxRuntimeEngine(dst, options, manifest).close()
        info.build_time_s = time.perf_counter() - start
        return info

    def load(self, engine_dir: Path, manifest: artifact_pb2.Manifest, options: BuildOptions) -> Engine:
        return OnnxRuntimeEngine(engine_dir / ENGINE_FILE, options, manifest)
