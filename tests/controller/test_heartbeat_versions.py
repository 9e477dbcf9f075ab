"""A heartbeat that waited in the controller's buffer must not undo a version change.

Heartbeats are buffered in the hub and written in batches (``fleet.flush_heartbeats``); command
statuses are written at once. A heartbeat received just before a switch's status carries the old
versions. Written after the switch, it would set the device back to the old version, and the next
rollout would find no baseline for the device. A bad candidate then passed the gate. This was
seen under load in ``tests/reliability/test_gate_first.py``. The test uses the real database
code on SQLite and PostgreSQL.
"""

from __future__ import annotations

import time

from sqlalchemy.engine import Engine
from sqlmodel import Session

from controller.db import session_scope
from controller.models import Command, CommandKind, CommandState, Device
from controller.services import fleet
from controller.services.hub import SessionHub
from protos import fleet_pb2


def _device_with_switch(db_engine: Engine) -> str:
    with session_scope(db_engine) as session:
        session.add(Device(id="d1", active_version="m:1", connected=True))
        session.flush()
        session.add(
            Command(
                id="c-switch",
                device_id="d1",
                kind=CommandKind.switch,
                model_version="m:2",
                state=CommandState.sent,
            )  # fmt: skip
        )
    return "d1"


def test_a_heartbeat_from_before_a_switch_does_not_put_the_old_version_back(db_engine: Engine) -> None:
    device_id = _device_with_switch(db_engine)
    hub = SessionHub("me")
    hub.note_heartbeat(device_id, "m:1", "m:2")  # sent by the agent before it switched
    time.sleep(0.01)
    with session_scope(db_engine) as session:
        fleet.record_status(
            session=session,
            device_id=device_id,
            status=fleet_pb2.CommandStatus(command_id="c-switch", state="succeeded", model_version="m:2"),
        )
    with session_scope(db_engine) as session:
        fleet.flush_heartbeats(session=session, seen=hub.drain_heartbeats())
    with Session(db_engine) as session:
        device = session.get(Device, device_id)
        assert (device.active_version, device.previous_version) == ("m:2", "m:1")

    # a heartbeat received after the switch is written as usual
    time.sleep(0.01)
    hub.note_heartbeat(device_id, "m:2", "", "m:1")
    with session_scope(db_engine) as session:
        fleet.flush_heartbeats(session=session, seen=hub.drain_heartbeats())
    with Session(db_engine) as session:
        device = session.get(Device, device_id)
        assert (device.active_version, device.candidate_version) == ("m:2", "")
        assert device.last_seen is not None


def test_heartbeats_of_a_deleted_device_are_dropped(db_engine: Engine) -> None:
    hub = SessionHub("me")
    hub.note_heartbeat("gone", "m:1", "")
    with session_scope(db_engine) as session:
        fleet.flush_heartbeats(session=session, seen=hub.drain_heartbeats())
    with Session(db_engine) as session:
        assert session.get(Device, "gone") is None
