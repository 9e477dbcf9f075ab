"""Request counters and a latency window, shared by the dataplane (writes) and telemetry (reads)."""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass

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
