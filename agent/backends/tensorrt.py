"""TensorRT backend, written to the TensorRT 10+ Python API (PyPI ships 11.x).

It cannot run on a machine without ``import tensorrt`` and an NVIDIA GPU; there it reports
itself unavailable with the reason and the shared backend contract tests skip it. Nothing here
pretends to be TensorRT.

How precisions are built (one code path for 10.x and 11.x wherever possible; docs/agent.md):
- fp32: the ONNX parsed into a *strongly typed* network (types come from the graph).
- fp16: the graph converted to float16 first (ONNX Runtime's converter, fp32 I/O kept), then
  strongly typed. On 10.x with a DLA target, the FP16 builder flag on a weakly typed network
  instead (what ``trtexec --fp16 --useDLACore`` does).
- int8: an ONNX with Q/DQ nodes is built strongly typed as is (explicit quantization). A plain
  model is quantized on the device with the symmetric int8 Q/DQ recipe TensorRT wants
  (``quantize_qdq(symmetric_activations=True)``), calibrated on the calibration images; on
  10.x, ``calibrator="legacy"`` uses ``IInt8EntropyCalibrator2`` instead (deprecated since 10.1,
  removed in 11).
Dynamic batch -> one optimization profile (1, opt_batch, max_batch). A timing cache beside the
engine cache speeds rebuilds. DLA: default device type DLA, the core, GPU fallback.
Host runtime: cuda-python (``cuda.bindings``) where installed, else pycuda.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from agent.backends.base import Availability, Backend, BuildInfo, BuildOptions, Engine, Precision, TensorInfo
from agent.errors import BackendUnavailable, BuildError, CalibrationError, InvalidInput
from protos import artifact_pb2, fleet_pb2

log = logging.getLogger(__name__)

ENGINE_FILE = "model.plan"
TIMING_CACHE_FILE = "timing.cache"


def _import_trt():
    try:
        import tensorrt as trt
    except Exception as exc:  # ImportError, or a wheel whose CUDA libraries fail to load
        raise BackendUnavailable(f"TensorRT is not installed here (import tensorrt: {exc})") from exc
    return trt


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for p in version.split(".")[:3]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def dla_supported(trt_version: str) -> tuple[bool, str]:
    """DLA exists in TensorRT <= 10.7 (JetPack 6) and again from 11.4.1 (JetPack >= 7.2.2)."""
    v = _version_tuple(trt_version)
    if v[:2] <= (10, 7) or v >= (11, 4, 1):
        return True, ""
    return False, f"TensorRT {trt_version} has no DLA support (DLA: <= 10.7 or >= 11.4.1)"


# ---------------------------------------------------------------- host runtime (CUDA buffers)
class _CudaPython:
    """cuda-python (``cuda.bindings.runtime``; older releases ``cuda.cudart``)."""

    name = "cuda-python"

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python < 12.6
        self.rt = cudart
        self.stream = self._check(cudart.cudaStreamCreate())

    def _check(self, result):
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise BuildError(f"CUDA runtime error {err}")
        return rest[0] if len(rest) == 1 else rest

    def malloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(max(nbytes, 1))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def htod(self, dst: int, src: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes, kind, self.stream))

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(self.rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes, kind, self.stream))

    def stream_handle(self) -> int:
        return int(self.stream)

    def synchronize(self) -> None:
        self._check(self.rt.cudaStreamSynchronize(self.stream))


class _PyCuda:
    """pycuda, where that is what the device has (older JetPack images)."""

    name = "pycuda"

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401 - creates the context
        import pycuda.driver as cuda

        self.cuda = cuda
        self.stream = cuda.Stream()
        self._allocations: dict[int, Any] = {}

    def malloc(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(max(nbytes, 1))
        self._allocations[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocations.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def htod(self, dst: int, src: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(dst, src, self.stream)

    def dtoh(self, dst: np.ndarray, src: int) -> None:
        self.cuda.memcpy_dtoh_async(dst, src, self.stream)

    def stream_handle(self) -> int:
        return int(self.stream.handle)

    def synchronize(self) -> None:
        self.stream.synchronize()


def _host_runtime():
    errors = []
    for cls in (_CudaPython, _PyCuda):
        try:
            return cls()
        except Exception as exc:
            errors.append(f"{cls.name}: {exc}")
    raise BackendUnavailable("no CUDA host runtime for TensorRT buffers (" + "; ".join(errors) + ")")


def _cuda_host_runtime_reason() -> str:
    for module in ("cuda.bindings.runtime", "cuda.cudart", "pycuda.driver"):
        try:
            __import__(module)
            return ""
        except Exception:
            continue
    return "neither cuda-python nor pycuda is installed (TensorRT needs one for device buffers)"


# ---------------------------------------------------------------- INT8 calibrator (10.x only)
def _make_entropy_calibrator(trt, options: BuildOptions, cache_file: Path, cuda):
    """``IInt8EntropyCalibrator2`` over our calibration feeds (TensorRT 10.x; gone in 11)."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise CalibrationError(f"TensorRT {trt.__version__} has no implicit INT8 calibrator; use Q/DQ")

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            if options.calibration is None:
                raise CalibrationError("INT8 needs calibration batches (BuildOptions.calibration)")
            self.batches = iter(options.calibration())
            self.device: dict[str, int] = {}
            self.batch_size = 1

        def get_batch_size(self) -> int:
            return self.batch_size

        def get_batch(self, names):
            batch = next(self.batches, None)
            if batch is None:
                return None
            pointers = []
            for name in names:
                array = np.ascontiguousarray(batch[name])
                self.batch_size = array.shape[0]
                if name not in self.device:
                    self.device[name] = cuda.malloc(array.nbytes)
                cuda.htod(self.device[name], array)
                pointers.append(self.device[name])
            cuda.synchronize()
            return pointers

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.exists() else None

        def write_calibration_cache(self, cache) -> None:
            cache_file.write_bytes(bytes(cache))

    return _Calibrator()


# ---------------------------------------------------------------- engine
class TensorRTEngine(Engine):
    backend = "tensorrt"

    def __init__(self, plan: bytes, options: BuildOptions, manifest: artifact_pb2.Manifest) -> None:
        trt = _import_trt()
        self.trt = trt
        self.precision = options.precision
        self.device = options.device
        self.cuda = _host_runtime()
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        if options.device.startswith("dla:"):
            self.runtime.DLA_core = int(options.device.split(":")[1])
        self.engine = self.runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise BuildError("TensorRT could not deserialize the engine (built by another version or GPU?)")
        self.context = self.engine.create_execution_context()
        self._lock = threading.Lock()  # an execution context runs one inference at a time
        layouts = {t.name: t.layout for t in manifest.inputs}
        self._inputs: list[TensorInfo] = []
        self._outputs: list[TensorInfo] = []
        self._max_shapes: dict[str, tuple[int, ...]] = {}
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            dtype = np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self._inputs.append(TensorInfo(name, dtype, shape, layouts.get(name, "")))
                if -1 in shape:
                    self._max_shapes[name] = tuple(
                        int(d) for d in self.engine.get_tensor_profile_shape(name, 0)[2]
                    )
                else:
                    self._max_shapes[name] = shape
            else:
                self._outputs.append(TensorInfo(name, dtype, shape, ""))
        self._buffers: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity bytes)

    @property
    def inputs(self) -> list[TensorInfo]:
        return self._inputs

    @property
    def outputs(self) -> list[TensorInfo]:
        return self._outputs

    @property
    def max_batch(self) -> int | None:
        first = self._inputs[0].name
        return int(self._max_shapes[first][0]) if self._max_shapes.get(first) else None

    def _buffer(self, name: str, nbytes: int) -> int:
        ptr, capacity = self._buffers.get(name, (0, 0))
        if capacity < nbytes:
            if ptr:
                self.cuda.free(ptr)
            ptr = self.cuda.malloc(nbytes)
            self._buffers[name] = (ptr, nbytes)
        return ptr

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._lock:
            for spec in self._inputs:
                if spec.name not in feeds:
                    raise InvalidInput(f"missing input {spec.name!r}")
                array = np.ascontiguousarray(feeds[spec.name], dtype=spec.dtype)
                if not self.context.set_input_shape(spec.name, array.shape):
                    raise InvalidInput(
                        f"shape {array.shape} of {spec.name!r} is outside the engine's profile"
                    )
                ptr = self._buffer(spec.name, array.nbytes)
                self.cuda.htod(ptr, array)
                self.context.set_tensor_address(spec.name, ptr)
            results = {}
            for spec in self._outputs:
                shape = tuple(int(d) for d in self.context.get_tensor_shape(spec.name))
                host = np.empty(shape, dtype=spec.dtype)
                ptr = self._buffer(spec.name, host.nbytes)
                self.context.set_tensor_address(spec.name, ptr)
                results[spec.name] = host
            if not self.context.execute_async_v3(self.cuda.stream_handle()):
                raise BuildError("TensorRT execution failed")
            for spec in self._outputs:
                self.cuda.dtoh(results[spec.name], self._buffers[spec.name][0])
            self.cuda.synchronize()
            return results

    def memory_bytes(self) -> int:
        size = getattr(self.engine, "device_memory_size_v2", None) or getattr(
            self.engine, "device_memory_size", 0
        )
        return int(size or 0) + sum(cap for _, cap in self._buffers.values())

    def close(self) -> None:
        for ptr, _ in self._buffers.values():
            self.cuda.free(ptr)
        self._buffers.clear()
        self.context = None
        self.engine = None


# ---------------------------------------------------------------- backend
class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, timing_cache_dir: Path | None = None, calibrator: str = "qdq") -> None:
        self.timing_cache_dir = timing_cache_dir
        self.calibrator = calibrator  # "qdq" (10.x and 11.x) | "legacy" (10.x IInt8EntropyCalibrator2)

    def availability(self) -> Availability:
        try:
            trt = _import_trt()
        except BackendUnavailable as exc:
            return Availability(False, str(exc))
        reason = _cuda_host_runtime_reason()
        if reason:
            return Availability(False, reason, trt.__version__)
        return Availability(True, "", trt.__version__)

    def runtime_version(self) -> str:
        return _import_trt().__version__

    def default_device(self, profile: fleet_pb2.HardwareProfile) -> str:
        return "gpu:0"

    def capabilities(self, profile: fleet_pb2.HardwareProfile) -> list[fleet_pb2.Capability]:
        avail = self.availability()
        has_gpu = bool(profile.gpus) or profile.HasField("jetson")
        if not avail.available or not has_gpu:
            reason = avail.reason or "no NVIDIA GPU found (NVML reports none and this is not a Jetson)"
            return [
                fleet_pb2.Capability(backend=self.name, precision=p.value, device="gpu:0", reason=reason)
                for p in Precision
            ]
        gpu_indices = [g.index for g in profile.gpus] or [0]
        caps = [
            fleet_pb2.Capability(backend=self.name, precision=p.value, device=f"gpu:{i}", available=True)
            for i in gpu_indices
            for p in Precision
        ]
        if profile.HasField("jetson") and profile.jetson.dla_cores > 0:
            ok, why = dla_supported(avail.version)
            for core in range(profile.jetson.dla_cores):
                caps.append(fleet_pb2.Capability(backend=self.name, precision="fp32", device=f"dla:{core}",
                                                 reason="DLA runs FP16 and INT8 only"))  # fmt: skip
                for p in (Precision.FP16, Precision.INT8):
                    caps.append(
                        fleet_pb2.Capability(
                            backend=self.name,
                            precision=p.value,
                            device=f"dla:{core}",
                            available=ok,
                            reason=why,
                        )
                    )
        return caps

    # -- build
    def _timing_cache_path(self, out_dir: Path) -> Path:
        root = self.timing_cache_dir or out_dir.parent
        return root / f"tensorrt-{self.runtime_version()}.{TIMING_CACHE_FILE}"

    def build(
        self, onnx_path: Path, manifest: artifact_pb2.Manifest, options: BuildOptions, out_dir: Path
    ) -> BuildInfo:
        import onnx

        from agent.backends.onnxruntime import convert_fp16, has_qdq, quantize_qdq

        trt = _import_trt()
        start = time.perf_counter()
        info = BuildInfo(files=[ENGINE_FILE])
        major = _version_tuple(trt.__version__)[0]
        dla = options.device.startswith("dla:")
        if dla:
            ok, why = dla_supported(trt.__version__)
            if not ok:
                raise BackendUnavailable(why)
            if options.precision is Precision.FP32:
                raise BackendUnavailable("DLA runs FP16 and INT8 only")
        qdq = has_qdq(onnx.load(str(onnx_path), load_external_data=False))
        legacy_int8 = (
            options.precision is Precision.INT8 and not qdq and self.calibrator == "legacy" and major < 11
        )
        weak_fp16_dla = options.precision is Precision.FP16 and dla and major < 11
        strongly_typed = not (legacy_int8 or weak_fp16_dla)
        with tempfile.TemporaryDirectory(prefix="edgeloop-trt-") as tmp:
            source = onnx_path
            if strongly_typed and options.precision is Precision.FP16:
                source = Path(tmp) / "fp16.onnx"
                convert_fp16(onnx_path, source)
            elif strongly_typed and options.precision is Precision.INT8 and not qdq:
                source = Path(tmp) / "qdq.onnx"
                info.calibration_time_s, samples = quantize_qdq(
                    onnx_path, source, options, symmetric_activations=True
                )
                info.notes.append(f"symmetric int8 Q/DQ calibrated on {samples} samples")
            plan, calib_s = self._build_plan(
                trt, source, manifest, options, out_dir, strongly_typed, legacy_int8
            )
            info.calibration_time_s += calib_s
        (out_dir / ENGINE_FILE).write_bytes(plan)
        info.build_time_s = time.perf_counter() - start
        return info

    def _build_plan(
        self, trt, source: Path, manifest, options, out_dir: Path, strongly_typed: bool, legacy_int8: bool
    ):
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        flags = 0
        if strongly_typed and hasattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED"):
            flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)  # ignored (always on) in 11
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(source)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BuildError(f"TensorRT could not parse {source.name}: {errors}")
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
        # dynamic batch -> one optimization profile
        profile = builder.create_optimization_profile()
        dynamic = False
        for i in range(network.num_inputs):
            tensor = network.get_input(i)
            shape = list(tensor.shape)
            if any(d < 0 for d in shape):
                dynamic = True
                rest = [
                    d if d > 0 else self._fill_dim(manifest, tensor.name, j) for j, d in enumerate(shape)
                ][1:]
                profile.set_shape(
                    tensor.name,
                    [1, *rest],
                    [min(options.opt_batch, options.max_batch), *rest],
                    [options.max_batch, *rest],
                )
        if dynamic:
            config.add_optimization_profile(profile)
        # timing cache shared by every build of this TensorRT version on this device
        cache_path = self._timing_cache_path(out_dir)
        timing_cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
        config.set_timing_cache(timing_cache, ignore_mismatch=False)
        if options.device.startswith("dla:"):
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = int(options.device.split(":")[1])
            config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        if not strongly_typed:  # 10.x only: precision through builder flags
            if options.precision is Precision.FP16:
                config.set_flag(trt.BuilderFlag.FP16)
            if legacy_int8:
                config.set_flag(trt.BuilderFlag.INT8)
                config.set_flag(trt.BuilderFlag.FP16)  # layers without INT8 kernels
        calib_start = time.perf_counter()
        cuda = None
        if legacy_int8:
            if options.calibration is None:
                raise CalibrationError("INT8 for a model without Q/DQ nodes needs calibration images")
            cuda = _host_runtime()
            config.int8_calibrator = _make_entropy_calibrator(
                trt, options, out_dir / "calibration.cache", cuda
            )
            if dynamic:
                config.set_calibration_profile(profile)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise BuildError("TensorRT failed to build the engine (see the TensorRT log above)")
        calib_s = time.perf_counter() - calib_start if legacy_int8 else 0.0
        try:  # keep what this build learned for the next one
            tmp = cache_path.with_suffix(".tmp")
            tmp.write_bytes(bytes(config.get_timing_cache().serialize()))
            shutil.move(tmp, cache_path)
        except Exception as exc:
            log.warning("could not save the TensorRT timing cache: %s", exc)
        return bytes(plan), calib_s

    @staticmethod
    def _fill_dim(manifest: artifact_pb2.Manifest, name: str, axis: int) -> int:
        spec = next((t for t in manifest.inputs if t.name == name), None)
        p = manifest.preprocessing
        if spec is not None and axis in (1, 2, 3):
            nchw = (spec.layout or "NCHW") == "NCHW"
            dims = {1: 3, 2: p.height, 3: p.width} if nchw else {1: p.height, 2: p.width, 3: 3}
            if dims.get(axis):
                return int(dims[axis])
        raise BuildError(f"input {name!r} has a dynamic dimension {axis} that no manifest field fixes")

    def load(self, engine_dir: Path, manifest: artifact_pb2.Manifest, options: BuildOptions) -> Engine:
        return TensorRTEngine((engine_dir / ENGINE_FILE).read_bytes(), options, manifest)
