"""Dynamic batching of live requests (Triton's idea): requests that arrive within a short window
for the same engine and with the same per-sample shapes are concatenated into one batch, run
once, and the outputs split back per request. It trades up to ``max_delay_s`` of latency for
throughput when many clients send small batches (camera streams at batch 1). Off by default.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from agent.backends.base import Engine

log = logging.getLogger(__name__)


@dataclass
class _Job:
    engine: Engine
    feeds: dict[str, np.ndarray]
    rows: int
    future: Future = field(default_factory=Future)

    def signature(self) -> tuple:
        """What must match to share a batch: the engine and every input's dtype and sample shape."""
        return (id(self.engine), tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(self.feeds.items())))


class DynamicBatcher:
    def __init__(self, max_batch: int = 8, max_delay_s: float = 0.002) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.batches_run = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: _Job | None = None  # a job that did not fit the previous batch
        self._thread = threading.Thread(target=self._work, name="dynamic-batcher", daemon=True)
        self._thread.start()

    def run(self, engine: Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``feeds`` (one request) as part of a batch; blocks until its outputs are ready."""
        rows = next(iter(feeds.values())).shape[0] if feeds else 1
        if rows >= self.max_batch or engine.fixed_batch:
            return engine.run(feeds)  # big enough already, or a static-batch engine
        job = _Job(engine, feeds, rows)
        self._queue.put(job)
        return job.future.result()

    def _next(self, timeout: float | None) -> _Job | None:
        if self._held is not None:
            job, self._held = self._held, None
            return job
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def _work(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, rows = [first], first.rows
            limit = min(self.max_batch, first.engine.max_batch or self.max_batch)
            deadline = time.monotonic() + self.max_delay_s
            while rows < limit:
                job = self._next(max(deadline - time.monotonic(), 0))
                if job is None:
                    break
                if job.signature() != first.signature() or rows + job.rows > limit:
                    self._held = job  # starts the next batch
                    break
                batch.append(job)
                rows += job.rows
            self._execute(batch)

    def _execute(self, batch: list[_Job]) -> None:
        engine = batch[0].engine
        try:
            if len(batch) == 1:
                outputs = [engine.run(batch[0].feeds)]
            else:
                feeds = {k: np.concatenate([j.feeds[k] for j in batch]) for k in batch[0].feeds}
                merged = engine.run(feeds)
                outputs, start = [], 0
                for job in batch:
                    outputs.append({k: v[start : start + job.rows] for k, v in merged.items()})
                    start += job.rows
            self.batches_run += 1
        except Exception as exc:  # every request of the batch gets the error
            for job in batch:
                job.future.set_exception(exc)
            return
        for job, out in zip(batch, outputs, strict=True):
            job.future.set_result(out)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)
