"""What the rollout engine and the status writer read and write per pass, counted on the real
database (SQLite and PostgreSQL): a pass must cost O(in flight) or O(changed), never O(rollout).

Rows loaded are counted with SQLAlchemy's ``load`` event (one per ORM row built from a result),
statements with ``before_cursor_execute``: assertions on what the code asks the database for, not
on time.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
from sqlalchemy import event, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.db import session_scope
from controller.models import (
    Artifact,
    Command,
    CommandKind,
    CommandState,
    Deployment,
    DeploymentState,
    Device,
    ModelVersion,
    RolloutCreate,
    Selector,
    Strategy,
    utcnow,
)
from controller.services import bus, fleet, rollouts
from controller.services.hub import SessionHub
from protos import fleet_pb2


def _rollout(engine: Engine, n: int, waves: int) -> str:
    with session_scope(engine) as session:
        art = Artifact(sha256="ab" * 32, path="/nonexistent", signature="cd" * 64, size_bytes=1)
        session.add(art)
        session.flush()
        session.add(ModelVersion(name="m", version="m:2", artifact_id=art.id))
        session.add_all([Device(name=f"d{i:03d}", tags=["t"]) for i in range(n)])
        session.flush()
        rollout = rollouts.create_rollout(
            session=session,
            rollout_in=RolloutCreate(
                model_version="m:2",
                selector=Selector(tags=["t"]),
                strategy=Strategy(canary_share=0, waves=waves, min_fps_ratio=None, max_accuracy_drop=None),
            ),
        )
        return rollout.id


@contextmanager
def _loaded(cls: type) -> Iterator[list]:
    """The rows of ``cls`` the ORM builds inside the block."""
    seen: list = []

    def on_load(target: object, _context: object) -> None:
        seen.append(target)

    event.listen(cls, "load", on_load)
    try:
        yield seen
    finally:
        event.remove(cls, "load", on_load)


def _tick(engine: Engine, hub: SessionHub, since=None) -> None:  # noqa: ANN001 - datetime | None
    with session_scope(engine) as session:
        rollouts.tick(session=session, hub=hub, since=since)


def _settle_wave(engine: Engine, rid: str, wave: int) -> None:
    with session_scope(engine) as session:
        session.exec(
            update(Deployment)
            .where(col(Deployment.rollout_id) == rid)
            .where(col(Deployment.wave) == wave)
            .values(state=DeploymentState.succeeded)
        )


def test_a_pass_reads_the_in_flight_deployments_not_the_rollout(db_engine: Engine) -> None:
    """60 devices in 3 waves: with wave 0 settled and wave 1 out, a full pass builds the 20
    in-flight deployments of wave 1, not the 20 settled and 20 pending ones."""
    rid = _rollout(db_engine, 60, waves=3)
    hub = SessionHub()
    with _loaded(Deployment) as seen:
        _tick(db_engine, hub)  # wave 0 starts: its 20 pending are read to be deployed
    assert len(seen) == 20
    _settle_wave(db_engine, rid, 0)
    with _loaded(Deployment) as seen:
        _tick(db_engine, hub)  # wave 0 decided: wave 1 starts
    assert {d.wave for d in seen} == {1}, "only the wave that starts is read"
    with _loaded(Deployment) as seen:
        _tick(db_engine, hub)  # a full pass in the middle of wave 1
    assert len(seen) == 20
    assert {(d.wave, d.state) for d in seen} == {(1, DeploymentState.deploying)}
    with Session(db_engine) as session:
        rollout = rollouts.crud.get_rollout(session=session, rollout_id=rid)
        assert rollout.current_wave == 1
        assert len(session.exec(select(Command).where(Command.kind == CommandKind.deploy)).all()) == 40


def test_a_pass_since_reads_only_what_changed(db_engine: Engine) -> None:
    """Between full passes the engine reads the in-flight deployments whose command changed (or
    that were reported on) since its previous pass: 3 of 20 here, and none when nothing did."""
    rid = _rollout(db_engine, 20, waves=1)
    hub = SessionHub()
    _tick(db_engine, hub)
    mark = utcnow()
    with _loaded(Deployment) as seen:
        _tick(db_engine, hub, since=mark + timedelta(seconds=1))
    assert seen == []
    with session_scope(db_engine) as session:
        ids = [
            d.command_id
            for d in session.exec(
                select(Deployment).where(Deployment.rollout_id == rid).order_by(col(Deployment.device_id))
            ).all()[:3]
        ]
        session.exec(
            update(Command)
            .where(col(Command.id).in_(ids))
            .values(state=CommandState.succeeded, updated_at=utcnow() + timedelta(seconds=2))
        )
    with _loaded(Deployment) as seen:
        _tick(db_engine, hub, since=mark + timedelta(seconds=1))
    assert sorted(d.command_id for d in seen) == sorted(ids)
    assert {d.state for d in seen} == {DeploymentState.gating}  # deployed, waiting for the report
    with _loaded(Deployment) as seen:
        _tick(db_engine, hub)  # the full pass still sees every one in flight
    assert len(seen) == 20


def test_the_status_batch_is_one_read_of_commands_and_one_transaction(db_engine: Engine) -> None:
    """A moment's statuses from many devices: their commands read in one query, written in the
    order they came; an unknown state and another device's command are skipped, not fatal."""
    rid = _rollout(db_engine, 8, waves=1)
    _tick(db_engine, SessionHub())
    with Session(db_engine) as session:
        deps = session.exec(
            select(Deployment).where(Deployment.rollout_id == rid).order_by(col(Deployment.device_id))
        ).all()
    seen = []
    for d in deps[:6]:
        seen.append((d.device_id, fleet_pb2.CommandStatus(command_id=d.command_id, state="accepted")))
        seen.append(
            (d.device_id, fleet_pb2.CommandStatus(command_id=d.command_id, state="succeeded", kind="deploy"))
        )
    seen.append((deps[6].device_id, fleet_pb2.CommandStatus(command_id=deps[6].command_id, state="bogus")))
    seen.append((deps[0].device_id, fleet_pb2.CommandStatus(command_id=deps[7].command_id, state="failed")))
    statements: list[str] = []

    def on_execute(_conn, _cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(db_engine, "before_cursor_execute", on_execute)
    try:
        with session_scope(db_engine) as session:
            changed = fleet.record_statuses(session=session, seen=seen)
    finally:
        event.remove(db_engine, "before_cursor_execute", on_execute)
    assert changed == 12  # 6 accepted + 6 succeeded; the bogus and the foreign one changed nothing
    command_reads = [s for s in statements if s.lstrip().upper().startswith("SELECT") and "FROM command" in s]
    assert len(command_reads) == 1
    with Session(db_engine) as session:
        by_id = {c.id: c for c in session.exec(select(Command)).all()}
        for d in deps[:6]:
            assert by_id[d.command_id].state == CommandState.succeeded
            assert session.get(Device, d.device_id).active_version == "m:2"
        assert by_id[deps[6].command_id].state == CommandState.pending
        assert by_id[deps[7].command_id].state == CommandState.pending


@pytest.mark.postgres
def test_a_transactions_bus_messages_go_in_one_statement_at_commit(postgres_url: str) -> None:
    """Many ``bus.publish`` in one transaction: one pg_notify statement, sent at commit, every
    message delivered in order; none at all for a transaction rolled back."""
    import psycopg

    from controller.db import make_engine, migrate

    engine = make_engine(postgres_url)
    migrate(engine)
    listener = psycopg.connect(postgres_url.replace("postgresql+psycopg", "postgresql"), autocommit=True)
    try:
        listener.execute(f"LISTEN {bus.CHANNEL}")
        notifies: list[str] = []

        def on_execute(_conn, _cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001
            if "pg_notify" in statement:
                notifies.append(statement)

        event.listen(engine, "before_cursor_execute", on_execute)
        with Session(engine) as session:
            for i in range(5):
                bus.publish(session, origin="me", kind=bus.COMMAND, device_id=f"d{i}", command_id=f"c{i}")
            session.rollback()
        with Session(engine) as session:
            for i in range(5):
                bus.publish(session, origin="me", kind=bus.COMMAND, device_id=f"d{i}", command_id=f"c{i}")
            assert notifies == []  # nothing before the commit
            session.commit()
        event.remove(engine, "before_cursor_execute", on_execute)
        assert len(notifies) == 1
        got = [json.loads(n.payload)["c"] for n in listener.notifies(timeout=2.0, stop_after=5)]
        assert got == [f"c{i}" for i in range(5)]
        assert list(listener.notifies(timeout=0.3)) == []  # the rolled-back five never came
    finally:
        listener.close()
        engine.dispose()


def test_rollout_detail_counts_in_the_database_and_pages_its_deployments(db_engine: Engine) -> None:
    """The rollout detail: counts and waves from one grouped query (no deployment row built),
    and a page of deployments in wave and device order."""
    rid = _rollout(db_engine, 30, waves=3)
    _tick(db_engine, SessionHub())
    with Session(db_engine) as session:
        rollout = rollouts.crud.get_rollout(session=session, rollout_id=rid)
        with _loaded(Deployment) as seen:
            light = rollouts.crud.rollout_public(session=session, rollout=rollout, with_deployments=False)
        assert seen == []
        assert light.counts == {"deploying": 10, "pending": 20} and light.waves_total == 3
        everything = rollouts.crud.list_deployments(session=session, rollout_id=rid)
        page = rollouts.crud.rollout_public(session=session, rollout=rollout, skip=8, limit=5)
        assert [d.device_id for d in page.deployments] == [d.device_id for d in everything[8:13]]
        assert [d.wave for d in page.deployments] == [0, 0, 1, 1, 1]
        assert page.counts == light.counts


def test_a_report_batch_answers_each_report_and_one_refusal_leaves_the_others(db_engine: Engine) -> None:
    """Reports of several devices in one transaction: each gets its own result, a report for a
    command of another device is refused with the reason (and writes nothing), a resent report
    is the same result; the commands and devices are read once for the batch."""
    from controller.errors import PermissionDenied
    from controller.models import Result

    rid = _rollout(db_engine, 4, waves=1)
    _tick(db_engine, SessionHub())
    with Session(db_engine) as session:
        deps = session.exec(
            select(Deployment).where(Deployment.rollout_id == rid).order_by(col(Deployment.device_id))
        ).all()

    def report(d: Deployment) -> fleet_pb2.Report:
        return fleet_pb2.Report(model_version="m:2", backend="onnxruntime", precision="fp32",
                                command_id=d.command_id, accuracy={"top1": 0.9})  # fmt: skip

    seen = [(d.device_id, report(d)) for d in deps[:3]]
    seen.append((deps[3].device_id, report(deps[0])))  # device 3 reports on device 0's command
    seen.append((deps[1].device_id, report(deps[1])))  # a resend
    statements: list[str] = []

    def on_execute(_conn, _cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001
        statements.append(statement)

    event.listen(db_engine, "before_cursor_execute", on_execute)
    try:
        with session_scope(db_engine) as session:
            out = fleet.record_reports(session=session, seen=seen)
    finally:
        event.remove(db_engine, "before_cursor_execute", on_execute)
    assert [type(o).__name__ for o in out] == ["Result", "Result", "Result", "PermissionDenied", "Result"]
    assert isinstance(out[3], PermissionDenied) and "was not sent to this device" in out[3].message
    assert out[4].id == out[1].id
    by_pk = [s for s in statements if "FROM command" in s or "FROM device" in s]
    assert len(by_pk) == 2, by_pk  # one read of the devices, one of the commands
    with Session(db_engine) as session:
        rows = session.exec(select(Result)).all()
        assert sorted(r.device_id for r in rows) == sorted(d.device_id for d in deps[:3])
