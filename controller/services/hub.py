"""Who is connected right now: one command queue per open control stream, plus the heartbeats
seen since the last flush. Thread-safe: the rollout engine and REST handlers (other threads)
push commands into the gRPC event loop through ``call_soon_threadsafe``."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from dataclasses import dataclass, field

from protos import fleet_pb2


@dataclass
class StreamSession:
    device_id: str
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue
    opened: float = field(default_factory=time.time)


@dataclass
class HeartbeatSeen:
    ts: float
    active_version: str
    candidate_version: str
    previous_version: str = ""


class SessionHub:
    """``instance_id`` names this controller process among several on one database
    (``Settings.instance_id``): the controller bus (``bus.py``) ignores its own messages."""

    def __init__(self, instance_id: str = "") -> None:
        self.instance_id = instance_id or uuid.uuid4().hex
        self._lock = threading.Lock()
        self._sessions: dict[str, StreamSession] = {}
        self._heartbeats: dict[str, HeartbeatSeen] = {}
        self._progress: dict[str, fleet_pb2.CommandStatus] = {}  # device -> its latest "running"
        self._statuses: list[tuple[str, fleet_pb2.CommandStatus]] = []  # in arrival order
        self.statuses_waiting = threading.Event()  # set when ``_statuses`` has something

    def attach(self, session: StreamSession) -> StreamSession | None:
        """Register a stream; returns the one it replaces (a reconnect), which is closed."""
        with self._lock:
            old = self._sessions.get(session.device_id)
            self._sessions[session.device_id] = session
        if old is not None:
            old.loop.call_soon_threadsafe(old.queue.put_nowait, None)
        return old

    def detach(self, session: StreamSession) -> bool:
        """Forget a stream if it is still the current one for its device."""
        with self._lock:
            if self._sessions.get(session.device_id) is session:
                del self._sessions[session.device_id]
                return True
        return False

    def send(self, device_id: str, command: fleet_pb2.ControllerCommand) -> bool:
        with self._lock:
            session = self._sessions.get(device_id)
        if session is None:
            return False
        session.loop.call_soon_threadsafe(session.queue.put_nowait, command)
        return True

    def kick(self, device_id: str) -> None:
        """Close a device's stream (revoked)."""
        with self._lock:
            session = self._sessions.pop(device_id, None)
        if session is not None:
            session.loop.call_soon_threadsafe(session.queue.put_nowait, None)

    def is_connected(self, device_id: str) -> bool:
        with self._lock:
            return device_id in self._sessions

    def connected(self) -> set[str]:
        with self._lock:
            return set(self._sessions)

    def note_heartbeat(self, device_id: str, active: str, candidate: str, previous: str = "") -> None:
        with self._lock:
            self._heartbeats[device_id] = HeartbeatSeen(time.time(), active, candidate, previous)

    def drain_heartbeats(self) -> dict[str, HeartbeatSeen]:
        with self._lock:
            seen, self._heartbeats = self._heartbeats, {}
        return seen

    def note_progress(self, device_id: str, status: fleet_pb2.CommandStatus) -> None:
        """A "running" status (download progress, a note): kept, the latest per device (one
        command runs at a time on a device), and written with the heartbeats, not one by one."""
        with self._lock:
            self._progress[device_id] = status

    def drain_progress(self) -> dict[str, fleet_pb2.CommandStatus]:
        with self._lock:
            seen, self._progress = self._progress, {}
        return seen

    def note_status(self, device_id: str, status: fleet_pb2.CommandStatus) -> None:
        """A status that moves a command (accepted, succeeded, failed): kept in arrival order
        and written by the status writer (``workers.run_status_writer``) in one transaction
        with the others of the same moment, not one transaction each. One lost in a crash is
        like one lost on the wire: the agent repeats a command's final status when the
        command is resent at its next connect."""
        with self._lock:
            self._statuses.append((device_id, status))
        self.statuses_waiting.set()

    def drain_statuses(self) -> list[tuple[str, fleet_pb2.CommandStatus]]:
        with self._lock:
            seen, self._statuses = self._statuses, []
            self.statuses_waiting.clear()
        return seen

    def requeue_statuses(self, seen: list[tuple[str, fleet_pb2.CommandStatus]]) -> None:
        """Put back statuses a failed write did not record, before any that came since."""
        with self._lock:
            self._statuses[:0] = seen
        self.statuses_waiting.set()
