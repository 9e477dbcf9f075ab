"""The LISTEN side of ``bus.py``: one thread per controller process on PostgreSQL."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable

from sqlalchemy.engine import Engine
from sqlmodel import col, select

from controller import crud
from controller.db import session_scope
from controller.models import Command
from controller.services.bus import CHANNEL, COMMAND, KICK
from controller.services.commands import command_to_proto
from controller.services.hub import SessionHub

log = logging.getLogger(__name__)
BATCH = 2000  # notifications handled together at most (one SELECT for their commands)


class BusListener:
    """The LISTEN side, in its own thread; ``on_kick`` ends a device's streams here."""

    def __init__(self, engine: Engine, hub: SessionHub, on_kick: Callable[[str], None]) -> None:
        self.engine = engine
        self.hub = hub
        self.on_kick = on_kick
        self.received = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.listening = threading.Event()

    def start(self) -> BusListener:
        if self.engine.dialect.name == "postgresql":
            self._thread = threading.Thread(target=self._run, name="controller-bus", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        delay = 0.5
        first = True
        while not self._stop.is_set():
            try:
                self._listen(resend=not first)
            except Exception as exc:
                self.listening.clear()
                if self._stop.is_set():
                    return
                log.warning("controller bus: %s; listening again in %.1fs", exc, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 10.0)
            first = False

    def _listen(self, *, resend: bool) -> None:
        import psycopg

        url = self.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"LISTEN {CHANNEL}")
            self.listening.set()
            if resend:  # what was notified while this listener was away
                for device_id in self.hub.connected():
                    self._send_open(device_id)
            while not self._stop.is_set():  # a wave's notifications in batches, not one by one
                self.handle_batch([n.payload for n in conn.notifies(timeout=0.2, stop_after=BATCH)])

    def handle_batch(self, payloads: list[str]) -> None:
        """Messages in the order they were sent; those from this process itself are done
        already. The commands for devices whose streams are here are read in one query."""
        wanted: list[tuple[str, str]] = []  # (device, command) in order
        for payload in payloads:
            try:
                msg = json.loads(payload)
                origin, kind, device_id = str(msg["o"]), str(msg["k"]), str(msg["d"])
            except (ValueError, KeyError, TypeError):
                log.warning("controller bus: unreadable message %.100r ignored", payload)
                continue
            if origin == self.hub.instance_id:
                continue
            self.received += 1
            if kind == KICK:
                self._send(wanted)
                wanted = []
                self.on_kick(device_id)
            elif kind == COMMAND and self.hub.is_connected(device_id):
                wanted.append((device_id, str(msg.get("c", ""))))
        self._send(wanted)

    def _send(self, wanted: list[tuple[str, str]]) -> None:
        if not wanted:
            return
        with session_scope(self.engine) as session:
            rows = session.exec(select(Command).where(col(Command.id).in_([c for _, c in wanted]))).all()
            found = {c.id: c for c in rows}
        for device_id, command_id in wanted:
            command = found.get(command_id)
            if command is not None and command.device_id == device_id and not command.state.terminal:
                self.hub.send(device_id, command_to_proto(command))

    def _send_open(self, device_id: str) -> None:
        with session_scope(self.engine) as session:
            rows = crud.open_commands_for_device(session=session, device_id=device_id)
        for command in rows:
            self.hub.send(device_id, command_to_proto(command))
