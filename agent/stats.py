"""Request counters: a latency window shared by the dataplane (writes) and telemetry (reads),
and the cumulative per-model statistics of the KServe/Triton statistics extension."""

from __future__ import annotations

import copy
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class StatsSnapshot:
    requests: int  # total since start
    failed: int
    images: int
    fps: float  # images per second since the previous snapshot
    latency_ms: dict[str, float | None]  # p50/p90/p99 over the window


class RequestStats:
    def __init__(self, window: int = 2048) -> None:
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=window)
        self.requests = 0
        self.failed = 0
        self.images = 0
        self._last_images = 0
        self._last_time = time.monotonic()

    def record(self, latency_s: float, images: int, ok: bool = True) -> None:
        with self._lock:
            self.requests += 1
            if ok:
                self.images += images
                self._latencies.append(latency_s * 1000)
            else:
                self.failed += 1

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            now = time.monotonic()
            elapsed = max(now - self._last_time, 1e-9)
            fps = (self.images - self._last_images) / elapsed
            self._last_images, self._last_time = self.images, now
            lat = np.asarray(self._latencies, dtype=np.float64)
            self._latencies.clear()
            pct: dict[str, float | None] = {"p50": None, "p90": None, "p99": None}
            if lat.size:
                p50, p90, p99 = np.percentile(lat, [50, 90, 99])
                pct = {"p50": float(p50), "p90": float(p90), "p99": float(p99)}
            return StatsSnapshot(self.requests, self.failed, self.images, fps, pct)


@dataclass
class Duration:
    """Triton's ``StatisticDuration``: how many, and their total nanoseconds."""

    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns


@dataclass
class BatchStats:
    """One executed batch size: executions and their compute durations."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass
class ModelStats:
    """Triton's ``ModelStatistics`` of one model version, cumulative since the agent started."""

    name: str
    version: str
    last_inference_ms: int = 0
    inference_count: int = 0  # images (batch rows) answered
    execution_count: int = 0  # engine runs
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchStats] = field(default_factory=dict)


class ModelStatistics:
    """Per model version counters of the statistics extension (HTTP and gRPC read the same).
    Requests are recorded by the dataplane, executions by the engine runner (the batcher when
    dynamic batching is on: several requests share one execution)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[tuple[str, str], ModelStats] = {}

    def _get(self, name: str, version: str) -> ModelStats:
        key = (name, version)
        if key not in self._models:
            self._models[key] = ModelStats(name, version)
        return self._models[key]

    def request(self, name: str, version: str, *, ok: bool, total_ns: int, images: int = 0,
                queue_ns: int = 0, input_ns: int = 0, infer_ns: int = 0, output_ns: int = 0) -> None:  # fmt: skip
        with self._lock:
            m = self._get(name, version)
            if not ok:
                m.fail.add(total_ns)
                return
            m.success.add(total_ns)
            m.queue.add(queue_ns)
            m.compute_input.add(input_ns)
            m.compute_infer.add(infer_ns)
            m.compute_output.add(output_ns)
            m.inference_count += images
            m.last_inference_ms = int(time.time() * 1000)

    def execution(
        self, name: str, version: str, batch: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        with self._lock:
            m = self._get(name, version)
            m.execution_count += 1
            b = m.batches.setdefault(batch, BatchStats())
            b.compute_input.add(input_ns)
            b.compute_infer.add(infer_ns)
            b.compute_output.add(output_ns)

    def empty(self, name: str, version: str) -> ModelStats:
        return ModelStats(name, version)

    def snapshot(self, name: str = "", version: str = "") -> list[ModelStats]:
        """Copies of the stats of ``name`` (and ``version``), or of every model; sorted."""
        with self._lock:
            chosen = [
                m
                for (n, v), m in sorted(self._models.items())
                if (not name or n == name) and (not version or v in (version, _short(v)))
            ]
            return [copy.deepcopy(m) for m in chosen]


def _short(version: str) -> str:
    """``colour:3`` -> ``3``: clients may name a version by the part after the model name."""
    return version.rpartition(":")[2]


def _duration(d: Duration) -> dict:
    return {"count": d.count, "ns": d.ns}


def statistics_json(models: list[ModelStats]) -> dict:
    """The statistics extension's JSON body (Triton's field names)."""
    out = []
    for m in models:
        out.append({
            "name": m.name, "version": m.version, "last_inference": m.last_inference_ms,
            "inference_count": m.inference_count, "execution_count": m.execution_count,
            "inference_stats": {
                "success": _duration(m.success), "fail": _duration(m.fail), "queue": _duration(m.queue),
                "compute_input": _duration(m.compute_input), "compute_infer": _duration(m.compute_infer),
                "compute_output": _duration(m.compute_output),
                "cache_hit": {"count": 0, "ns": 0}, "cache_miss": {"count": 0, "ns": 0},
            },
            "batch_stats": [
                {"batch_size": size, "compute_input": _duration(b.compute_input),
                 "compute_infer": _duration(b.compute_infer), "compute_output": _duration(b.compute_output)}
                for size, b in sorted(m.batches.items())
            ],
            "memory_usage": [],
        })  # fmt: skip
    return {"model_stats": out}
