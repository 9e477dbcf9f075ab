"""What one controller process tells the others on the same PostgreSQL: a new command for a
device (whose stream another process may hold), a device whose streams must end (revoked,
re-enrolled). PostgreSQL ``NOTIFY`` carries it: sent inside the transaction that stores the
change, so it is delivered at commit and never for a rolled-back one.

Each process runs one ``BusListener`` (``bus_listener.py``: its own connection, ``LISTEN``); a message from another
process wakes the local ``SessionHub`` for the devices whose streams it holds. A message lost
while the listener reconnects is harmless: the listener then resends the open commands of
every device connected here (the agent runs a command once, by id), and an agent's stream
resends them anyway at each connect (``fleet.record_connected``). SQLite: no-op (one process).
"""

from __future__ import annotations

import json

from sqlalchemy import event, text
from sqlmodel import Session

CHANNEL = "edgeloop_fleet"
COMMAND, KICK = "command", "kick"


PENDING = "edgeloop_bus"  # session.info key: this transaction's messages, sent just before commit
NOTIFY_BATCH = 1000


def publish(session: Session, *, origin: str, kind: str, device_id: str, command_id: str = "") -> None:
    """Tell the other controllers, at this transaction's commit (nothing on SQLite). The
    messages of one transaction go out in one statement just before it commits (a wave's
    thousands of commands: one round trip, not one each); PostgreSQL delivers them at commit,
    in order, and never for a rolled-back transaction."""
    if session.get_bind().dialect.name != "postgresql":
        return
    payload = json.dumps({"o": origin, "k": kind, "d": device_id, "c": command_id}, separators=(",", ":"))
    pending = session.info.get(PENDING)
    if pending is None:
        pending = session.info[PENDING] = []
        event.listen(session, "before_commit", _notify_pending, once=True)
        event.listen(session, "after_soft_rollback", _drop_pending, once=True)
    pending.append(payload)


def _notify_pending(session: Session) -> None:
    payloads = session.info.pop(PENDING, None) or []
    for start in range(0, len(payloads), NOTIFY_BATCH):
        session.execute(
            text("SELECT pg_notify(:channel, p) FROM unnest(CAST(:payloads AS text[])) AS p"),
            {"channel": CHANNEL, "payloads": payloads[start : start + NOTIFY_BATCH]},
        )


def _drop_pending(session: Session, _previous_transaction: object = None) -> None:
    session.info.pop(PENDING, None)
