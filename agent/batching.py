"""Dynamic batching (Triton's idea): requests that arrive within a short window for the same
engine and with the same per-sample shapes are concatenated into one batch, run once, and the
outputs split back per request. It trades up to ``max_delay_s`` of latency for throughput when
many clients send small batches (camera streams at batch 1).

The one batcher of the agent: live inference uses it (``DataPlane``, off unless
``batch_delay_ms`` is set) and so does the benchmark's LoadGen SUT (``max_delay_s=0``: what is
queued runs together, nothing waits). A static-batch engine takes exactly its fixed batch: a
merged batch smaller than that is padded with copies of its last row and the padding cut off
the outputs.
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


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return next(iter(feeds.values())).shape[0] if feeds else 1


class DynamicBatcher:
    def __init__(self, max_batch: int = 8, max_delay_s: float = 0.002) -> None:
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.batches_run = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()  # None: close
        self._held: list[_Job | None] = []  # what did not fit the previous batch
        self._thread = threading.Thread(target=self._work, name="dynamic-batcher", daemon=True)
        self._thread.start()

    def submit(self, engine: Engine, feeds: dict[str, np.ndarray]) -> Future:
        """Queue ``feeds`` (one request) for the next batch of ``engine``; the future holds its
        outputs (or the engine's error). Never runs in the caller's thread."""
        job = _Job(engine, feeds, _rows(feeds))
        self._queue.put(job)
        return job.future

    def run(self, engine: Engine, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run ``feeds`` (one request) as part of a batch; blocks until its outputs are ready. A
        request that fills a batch by itself, or one for a static-batch engine (the dataplane has
        checked it carries the full fixed batch), runs at once in the caller's thread."""
        if _rows(feeds) >= self.max_batch or engine.fixed_batch:
            return engine.run(feeds)
        return self.submit(engine, feeds).result()

    def _limit(self, engine: Engine) -> int:
        """Rows one run holds at most: a static-batch engine's fixed batch, else ``max_batch``
        within the engine's own maximum."""
        return engine.fixed_batch or min(self.max_batch, engine.max_batch or self.max_batch)

    def _next(self, timeout: float | None) -> _Job | None:
        """The next job (None once closed); raises ``queue.Empty`` after ``timeout`` seconds."""
        if self._held:
            return self._held.pop()
        return self._queue.get(timeout=timeout)

    def _work(self) -> None:
        while True:
            first = self._next(None)
            if first is None:
                return
            batch, rows = [first], first.rows
            limit = self._limit(first.engine)
            deadline = time.monotonic() + self.max_delay_s
            while rows < limit:
                try:
                    job = self._next(max(deadline - time.monotonic(), 0))
                except queue.Empty:
                    break
                if job is None or job.signature() != first.signature() or rows + job.rows > limit:
                    self._held.append(job)  # starts the next batch (None: stops after this one)
                    break
                batch.append(job)
                rows += job.rows
            self._execute(batch, rows)

    def _execute(self, batch: list[_Job], rows: int) -> None:
        engine = batch[0].engine
        fixed = engine.fixed_batch
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {k: np.concatenate([j.feeds[k] for j in batch]) for k in batch[0].feeds}
            pad = fixed - rows if fixed and rows < fixed else 0
            padded = pad > 0
            if padded:
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in feeds.items()}
            merged = engine.run(feeds)
            if len(batch) == 1 and not padded:
                outputs = [merged]
            else:
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
        """Stop the worker once what is queued has run."""
        self._queue.put(None)
        self._thread.join(timeout=5)
