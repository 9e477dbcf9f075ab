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
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from agent.backends.base import Engine

log = logging.getLogger(__name__)


@dataclass
class Timing:
    """Where one request's time went, in nanoseconds (Triton's statistics split): waiting in the
    queue, assembling the engine's feeds (merge, pad), the engine run, splitting the outputs.
    ``batch`` is the size of the execution the request shared."""

    queue_ns: int = 0
    input_ns: int = 0
    infer_ns: int = 0
    output_ns: int = 0
    batch: int = 0


# called once per engine execution: (tag, batch size, input ns, infer ns, output ns)
BatchSink = Callable[[object, int, int, int, int], None]


def run_timed(engine: Engine, feeds: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], Timing]:
    """One engine run with its time measured, for a request that runs alone."""
    start = time.perf_counter_ns()
    outputs = engine.run(feeds)
    return outputs, Timing(infer_ns=time.perf_counter_ns() - start, batch=_rows(feeds))


@dataclass
class _Job:
    engine: Engine
    feeds: dict[str, np.ndarray]
    rows: int
    tag: object = None
    future: Future = field(default_factory=Future)
    queued_ns: int = field(default_factory=time.perf_counter_ns)
    timing: Timing = field(default_factory=Timing)

    def signature(self) -> tuple:
        """What must match to share a batch: the engine and every input's dtype and sample shape."""
        return (id(self.engine), tuple((k, v.dtype.str, v.shape[1:]) for k, v in sorted(self.feeds.items())))


def _rows(feeds: dict[str, np.ndarray]) -> int:
    return next(iter(feeds.values())).shape[0] if feeds else 1


class DynamicBatcher:
    def __init__(
        self,
        max_batch: int = 8,
        max_delay_s: float = 0.002,
        preferred_batch_sizes: tuple[int, ...] = (),
        on_batch: BatchSink | None = None,
    ) -> None:
        """``preferred_batch_sizes``: a batch that reaches one of these sizes runs at once instead
        of waiting out ``max_delay_s`` (Triton's ``preferred_batch_size``). ``on_batch`` hears of
        every execution (the model statistics)."""
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.preferred = frozenset(preferred_batch_sizes)
        self.on_batch = on_batch
        self.batches_run = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()  # None: close
        self._held: list[_Job | None] = []  # what did not fit the previous batch
        self._thread = threading.Thread(target=self._work, name="dynamic-batcher", daemon=True)
        self._thread.start()

    def submit(self, engine: Engine, feeds: dict[str, np.ndarray], tag: object = None) -> Future:
        """Queue ``feeds`` (one request) for the next batch of ``engine``; the future holds its
        outputs (or the engine's error). Never runs in the caller's thread."""
        return self._submit(engine, feeds, tag).future

    def _submit(self, engine: Engine, feeds: dict[str, np.ndarray], tag: object) -> _Job:
        job = _Job(engine, feeds, _rows(feeds), tag)
        self._queue.put(job)
        return job

    def run_timed(
        self, engine: Engine, feeds: dict[str, np.ndarray], tag: object = None
    ) -> tuple[dict[str, np.ndarray], Timing]:
        """``run`` with the request's ``Timing``; ``tag`` names the model to ``on_batch``."""
        if _rows(feeds) >= self.max_batch or engine.fixed_batch:
            outputs, timing = run_timed(engine, feeds)
            if self.on_batch is not None:
                self.on_batch(tag, timing.batch, 0, timing.infer_ns, 0)
            return outputs, timing
        job = self._submit(engine, feeds, tag)
        outputs = job.future.result()
        return outputs, job.timing

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
                if rows in self.preferred:
                    break
            self._execute(batch, rows)

    def _execute(self, batch: list[_Job], rows: int) -> None:
        engine = batch[0].engine
        fixed = engine.fixed_batch
        started = time.perf_counter_ns()
        try:
            if len(batch) == 1:
                feeds = batch[0].feeds
            else:
                feeds = {k: np.concatenate([j.feeds[k] for j in batch]) for k in batch[0].feeds}
            pad = fixed - rows if fixed and rows < fixed else 0
            padded = pad > 0
            if padded:
                feeds = {k: np.concatenate([v, np.repeat(v[-1:], pad, axis=0)]) for k, v in feeds.items()}
            ran = time.perf_counter_ns()
            merged = engine.run(feeds)
            inferred = time.perf_counter_ns()
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
        done = time.perf_counter_ns()
        size = fixed or rows
        for job in batch:
            job.timing = Timing(
                max(started - job.queued_ns, 0), ran - started, inferred - ran, done - inferred, size
            )
        if self.on_batch is not None:
            try:
                self.on_batch(batch[0].tag, size, ran - started, inferred - ran, done - inferred)
            except Exception:  # statistics never fail a request
                log.exception("batch statistics failed")
        for job, out in zip(batch, outputs, strict=True):
            job.future.set_result(out)

    def close(self) -> None:
        """Stop the worker once what is queued has run."""
        self._queue.put(None)
        self._thread.join(timeout=5)
