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

from sqlalchemy import text
from sqlmodel import Session

CHANNEL = "edgeloop_fleet"
COMMAND, KICK = "command", "kick"


def publish(session: Session, *, origin: str, kind: str, device_id: str, command_id: str = "") -> None:
    """Tell the other controllers, at this transaction's commit (nothing on SQLite)."""
    if session.get_bind().dialect.name != "postgresql":
        return
    payload = json.dumps({"o": origin, "k": kind, "d": device_id, "c": command_id}, separators=(",", ":"))
    session.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": payload})
