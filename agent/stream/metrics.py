"""Per-stream counters: what a DeepStream user reads off its perf callback, and a bit more.

Each source has one ``StreamMetrics``: frames decoded, processed and dropped, reconnects,
errors, the processed FPS over a sliding window, and capture-to-event latency p50/p99 over the
last ``window`` frames. Written by the source's and the pipeline's threads, read by telemetry and
the HTTP view; a lock keeps the snapshot consistent.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np


@dataclass
class StreamMetrics:
    source_id: str
    window: int = 512
    decoded: int = 0
    processed: int = 0
    dropped: int = 0
    reconnects: int = 0
    errors: int = 0
    resolution_changes: int = 0
    state: str = "starting"  # starting | running | reconnecting | ended | failed | removed
    last_error: str = ""
    width: int = 0
    height: int = 0
    nominal_fps: float = 0.0  # the source's own frame rate, when it says
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _done_at: deque = field(default_factory=lambda: deque(maxlen=512), repr=False)
    _latency_ms: deque = field(default_factory=lambda: deque(maxlen=512), repr=False)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def set_state(self, state: str, error: str = "") -> None:
        with self._lock:
            self.state = state
            if error:
                self.last_error = error
                self.errors += 1

    def frame_done(self, captured: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock:
            self.processed += 1
            self._done_at.append(now)
            self._latency_ms.append(max(0.0, (now - captured) * 1000.0))

    def fps(self, now: float | None = None, horizon_s: float = 5.0) -> float:
        now = time.time() if now is None else now
        with self._lock:
            recent = [t for t in self._done_at if now - t <= horizon_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0], 1e-6)
        return (len(recent) - 1) / span if now - recent[-1] < 1.0 else len(recent) / horizon_s

    def latencies_ms(self) -> list[float]:
        with self._lock:
            return list(self._latency_ms)

    def snapshot(self) -> dict:
        lat = self.latencies_ms()
        p50, p99 = (float(np.percentile(lat, 50)), float(np.percentile(lat, 99))) if lat else (0.0, 0.0)
        fps = self.fps()
        with self._lock:
            return {
                "source_id": self.source_id,
                "state": self.state,
                "fps": round(fps, 2),
                "decoded": self.decoded,
                "processed": self.processed,
                "dropped": self.dropped,
                "reconnects": self.reconnects,
                "errors": self.errors,
                "resolution_changes": self.resolution_changes,
                "latency_ms": {"p50": round(p50, 2), "p99": round(p99, 2)},
                "width": self.width,
                "height": self.height,
                "nominal_fps": round(self.nominal_fps, 3),
                "last_error": self.last_error,
            }


@dataclass
class StageTimes:
    """Seconds spent per pipeline stage (the benchmark prints them); added to by one thread each."""

    totals: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, stage: str, seconds: float) -> None:
        with self._lock:
            self.totals[stage] = self.totals.get(stage, 0.0) + seconds

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self.totals)
