"""A bounded on-disk queue of QoS 1 telemetry (events, stream events) not yet acknowledged.

Each message is one file ``<seq>.json`` (topic and payload), written atomically before it is
handed to the broker client and deleted when the broker acknowledges it (PUBACK). What is still
there when the agent restarts, or when the broker comes back, is sent again, in order, with the
payload it had - its own ``ts``, not the time it was finally delivered. Delivery is at least once:
a message acknowledged just before a crash may be sent twice (the controller drops duplicates).

Bounded by ``max_messages``: when full, the oldest message is dropped first and counted
(``dropped``; the agent's metrics carry it as ``telemetry_dropped``).
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from agent.durable import atomic_write

log = logging.getLogger(__name__)


class Spool:
    def __init__(self, folder: str | Path, *, max_messages: int = 10_000, fsync: bool = True) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_messages = max_messages
        self.fsync = fsync
        self.dropped = 0
        self._lock = threading.Lock()
        for stale in self.folder.glob(".*.tmp"):  # a write cut short by a crash: never handed out
            stale.unlink(missing_ok=True)
        self._seqs = sorted(int(p.stem) for p in self.folder.glob("*.json") if p.stem.isdigit())
        self._next = (self._seqs[-1] + 1) if self._seqs else 0

    def _path(self, seq: int) -> Path:
        return self.folder / f"{seq:020d}.json"

    def __len__(self) -> int:
        return len(self._seqs)

    def put(self, topic: str, payload: str) -> int:
        """Store a message; returns its sequence number (drops the oldest when full)."""
        with self._lock:
            while len(self._seqs) >= self.max_messages:
                oldest = self._seqs.pop(0)
                self._path(oldest).unlink(missing_ok=True)
                self.dropped += 1
                log.warning("telemetry spool full (%d): dropped the oldest message (%d dropped)",
                            self.max_messages, self.dropped)  # fmt: skip
            seq, self._next = self._next, self._next + 1
            blob = json.dumps({"topic": topic, "payload": payload})
            if self.fsync:
                atomic_write(self._path(seq), blob)
            else:
                tmp = self.folder / f".{seq}.tmp"
                tmp.write_text(blob, encoding="utf-8")
                tmp.replace(self._path(seq))
            self._seqs.append(seq)
            return seq

    def ack(self, seq: int) -> None:
        """The broker has the message: forget it."""
        with self._lock:
            if seq in self._seqs:
                self._seqs.remove(seq)
            self._path(seq).unlink(missing_ok=True)

    def pending(self) -> list[tuple[int, str, str]]:
        """(seq, topic, payload) of every stored message, oldest first."""
        with self._lock:
            seqs = list(self._seqs)
        out = []
        for seq in seqs:
            try:
                item = json.loads(self._path(seq).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # dropped or acknowledged meanwhile
            out.append((seq, str(item["topic"]), str(item["payload"])))
        return out
