"""The one small contract every engine backend meets.

A backend *builds* an engine from an ONNX file, its manifest and a precision (INT8 with
calibration data) into a directory of files, and *loads* such a directory into an ``Engine`` that
runs batches. Building and loading are separate so the engine cache can keep the built files and
load them again without rebuilding; a fresh build goes through the same ``load`` as a cache hit.
"""

from __future__ import annotations

import abc
import enum
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np

from protos import artifact_pb2, fleet_pb2


def usable_cores() -> int:
    """Cores this process may run on (affinity, so a pinned agent sees its own share). Here so
    that backends can size their CPU work; ``agent.probe`` reports it."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Precision(str, enum.Enum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"

    @classmethod
    def parse(cls, value: str | Precision) -> Precision:
        try:
            return cls(str(value.value if isinstance(value, Precision) else value).lower())
        except ValueError as exc:
            raise ValueError(f"unknown precision {value!r}; choose from {[p.value for p in cls]}") from exc


def fixed_batch(shape: Sequence[int]) -> int | None:
    """The batch a graph is fixed to (the first dimension of its first input when that is a
    number), None for a dynamic batch. The one place that decides "static batch": the dataplane,
    dynamic batching, the benchmark, the health check and calibration all ask here."""
    return int(shape[0]) if len(shape) and shape[0] > 0 else None


@dataclass(frozen=True)
class TensorInfo:
    """An engine's input or output: -1 marks a dynamic dimension."""

    name: str
    dtype: np.dtype
    shape: tuple[int, ...]
    layout: str = ""

    def to_spec(self) -> artifact_pb2.TensorSpec:
        return artifact_pb2.TensorSpec(
            name=self.name, dtype=np.dtype(self.dtype).name, shape=list(self.shape), layout=self.layout
        )


# Calibration data: a zero-argument callable returning a fresh iterable of feed batches
# ({input name: array with a batch dimension}); called once per calibration pass.
CalibrationFeeds = Callable[[], Iterable[dict[str, np.ndarray]]]


@dataclass(frozen=True)
class BuildOptions:
    precision: Precision = Precision.FP32
    device: str = "cpu"  # cpu | gpu:N | dla:N
    threads: int | None = None  # CPU threads (intra-op); None = the runtime's default
    max_batch: int = 32  # upper bound of the dynamic-batch optimisation profile
    opt_batch: int = 8  # the batch TensorRT tunes for
    calibration: CalibrationFeeds | None = field(default=None, compare=False)
    calibration_id: str = ""  # digest of the calibration data; part of the engine key for INT8
    calibration_method: str = "minmax"  # minmax | entropy | percentile
    workspace_bytes: int = 1 << 30


@dataclass
class BuildInfo:
    """What a build wrote and how long it took (seconds)."""

    files: list[str]
    build_time_s: float = 0.0
    calibration_time_s: float = 0.0
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str = ""
    version: str = ""


class Engine(abc.ABC):
    """A loaded, runnable engine. ``run`` is thread-safe in every backend."""

    backend: str
    precision: Precision
    device: str

    @property
    @abc.abstractmethod
    def inputs(self) -> list[TensorInfo]: ...

    @property
    @abc.abstractmethod
    def outputs(self) -> list[TensorInfo]: ...

    @abc.abstractmethod
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch; ``feeds`` maps every input name to an array of its dtype."""

    @abc.abstractmethod
    def memory_bytes(self) -> int:
        """Memory the engine holds (device memory for GPU engines, an RSS estimate on CPU)."""

    @property
    def fixed_batch(self) -> int | None:
        """The batch every run must have (a static-batch graph), None when the batch is dynamic."""
        return fixed_batch(self.inputs[0].shape) if self.inputs else None

    @property
    def concurrency(self) -> int | None:
        """How many ``run`` calls this engine admits at once (more callers wait their turn);
        None: not limited. A caller that keeps several batches in flight (the video pipeline)
        gains no engine time beyond it."""
        return 1

    @property
    def max_batch(self) -> int | None:
        """The largest batch this engine accepts; None when unbounded (dynamic on CPU)."""
        return self.fixed_batch

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the engine's resources."""


class Backend(abc.ABC):
    name: ClassVar[str]

    @abc.abstractmethod
    def availability(self) -> Availability:
        """Whether this backend can run here at all, and why not."""

    @abc.abstractmethod
    def runtime_version(self) -> str: ...

    @abc.abstractmethod
    def capabilities(self, profile: fleet_pb2.HardwareProfile) -> list[fleet_pb2.Capability]: ...

    @abc.abstractmethod
    def build(
        self, onnx_path: Path, manifest: artifact_pb2.Manifest, options: BuildOptions, out_dir: Path
    ) -> BuildInfo:
        """Build the engine files into ``out_dir`` (an empty directory)."""

    @abc.abstractmethod
    def load(self, engine_dir: Path, manifest: artifact_pb2.Manifest, options: BuildOptions) -> Engine:
        """Load what ``build`` wrote."""

    def default_device(self, profile: fleet_pb2.HardwareProfile) -> str:
        return "cpu"

    def supports(self, profile: fleet_pb2.HardwareProfile, precision: Precision, device: str) -> Availability:
        for cap in self.capabilities(profile):
            if cap.precision == precision.value and cap.device == device:
                version = self.runtime_version() if cap.available else ""
                return Availability(cap.available, cap.reason, version)
        return Availability(False, f"{self.name} does not offer {precision.value} on {device}")
