"""Batches that run concurrently, handed on in the order they were taken.

With ``model.inflight`` > 1 several engine workers run batches at once and finish in any
order. Tracking must see each source's frames in order, and the muxer takes a source's frames
oldest first, batch after batch: so results are published in the order the batches were
numbered when taken. A worker more than ``window`` batches ahead of the oldest unpublished one
waits, which bounds the frames held between the engine and the sinks.
"""

from __future__ import annotations

import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class InOrder(Generic[T]):
    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        self._window = window
        self._cond = threading.Condition()
        self._ready: dict[int, T] = {}
        self._next = 0
        self._closed = False

    def put(self, seq: int, item: T) -> None:
        """The result of batch ``seq`` (each number from 0 up, exactly once); waits while it is
        ``window`` or more ahead of the next one to publish (never for that one itself)."""
        with self._cond:
            while seq >= self._next + self._window and not self._closed:
                self._cond.wait(0.2)
            if seq < self._next or seq in self._ready:
                raise ValueError(f"batch {seq} was already handed in")
            self._ready[seq] = item
            if seq == self._next:
                self._cond.notify_all()

    def get(self, timeout_s: float) -> tuple[bool, T | None]:
        """(True, the next result in order), or (False, None) after ``timeout_s`` without it."""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while self._next not in self._ready:
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    return False, None
                self._cond.wait(left)
            item = self._ready.pop(self._next)
            self._next += 1
            self._cond.notify_all()  # a worker waiting for the window
            return True, item

    def waiting(self) -> int:
        """Results handed in and not yet taken."""
        with self._cond:
            return len(self._ready)

    def close(self) -> None:
        """Wake every waiter: puts no longer wait for the window, gets return at once when empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
