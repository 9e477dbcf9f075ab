"""Several controllers on one PostgreSQL: a rollout step is taken by one process only.

The claim is a row lock (``FOR UPDATE SKIP LOCKED``) held for the step's transaction, so the
tests run the real engine code (``rollouts.claim_rollouts`` / ``rollouts.tick``) from several
threads, each with its own connection, on the test PostgreSQL: the same as several processes
as far as the database can tell.
"""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from ctl_helpers import make_controller, start_agent, wait_until
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controller.db import make_engine, migrate, session_scope
from controller.models import (
    Artifact,
    Command,
    CommandKind,
    ControllerInstance,
    Device,
    ModelVersion,
    RollbackCreate,
    RolloutCreate,
    Selector,
    Strategy,
    utcnow,
)
from controller.services import commands, fleet, instances, rollouts
from controller.services.hub import SessionHub


@pytest.fixture
def pg_engine(postgres_url: str) -> Engine:
    engine = make_engine(postgres_url)
    migrate(engine)
    yield engine
    engine.dispose()


def _fleet(engine: Engine, *, rollouts_n: int, devices_per: int) -> list[str]:
    """``rollouts_n`` running rollouts of one model version, each to its own devices."""
    ids = []
    with session_scope(engine) as session:
        art = Artifact(sha256="ab" * 32, path="/nonexistent", signature="cd" * 64, size_bytes=1)
        session.add(art)
        session.flush()
        session.add(ModelVersion(name="m", version="m:2", artifact_id=art.id))
        session.flush()
        for r in range(rollouts_n):
            devices = [Device(name=f"r{r}-d{i}", tags=[f"r{r}"]) for i in range(devices_per)]
            session.add_all(devices)
            session.flush()
            rollout = rollouts.create_rollout(
                session=session,
                rollout_in=RolloutCreate(
                    model_version="m:2",
                    selector=Selector(tags=[f"r{r}"]),
                    strategy=Strategy(canary_share=0, waves=1, min_fps_ratio=None, max_accuracy_drop=None),
                ),
            )
            ids.append(rollout.id)
    return ids


@pytest.mark.postgres
def test_a_claimed_rollout_is_skipped_by_the_other_claimer(pg_engine: Engine) -> None:
    ids = set(_fleet(pg_engine, rollouts_n=3, devices_per=1))
    first = Session(pg_engine)
    try:
        held = {r.id for r in rollouts.claim_rollouts(session=first)}
        assert held == ids
        with Session(pg_engine) as second:  # another controller meanwhile: nothing to take
            assert rollouts.claim_rollouts(session=second) == []
        first.commit()  # the step is over: the locks go with the transaction
        with Session(pg_engine) as second:
            assert {r.id for r in rollouts.claim_rollouts(session=second)} == ids
    finally:
        first.close()


@pytest.mark.postgres
def test_a_killed_claimers_lock_dies_with_its_connection(pg_engine: Engine) -> None:
    """A process killed mid-step: its connection goes, the lock with it, the step is undone."""
    (rid,) = _fleet(pg_engine, rollouts_n=1, devices_per=2)
    conn = pg_engine.connect()
    doomed = Session(bind=conn)
    pid = doomed.exec(text("SELECT pg_backend_pid()")).one()[0]
    assert [r.id for r in rollouts.claim_rollouts(session=doomed)] == [rid]
    rollouts.tick(session=doomed, hub=SessionHub())  # its deploys are written, not committed
    with Session(pg_engine) as other:
        assert rollouts.claim_rollouts(session=other) == []
        # the server ends the backend as it does when the client's socket dies (SIGKILL)
        other.exec(text("SELECT pg_terminate_backend(:pid)").bindparams(pid=pid))
    conn.invalidate()
    doomed.close()
    with session_scope(pg_engine) as other:
        assert [r.id for r in rollouts.claim_rollouts(session=other)] == [rid]
        assert other.exec(select(Command)).all() == []  # nothing of the killed step survived


@pytest.mark.postgres
def test_concurrent_engines_never_take_the_same_step(pg_engine: Engine) -> None:
    """Four engines tick the same 12 rollouts at once: every device gets exactly one deploy."""
    _fleet(pg_engine, rollouts_n=12, devices_per=3)
    start = threading.Barrier(4)
    errors: list[BaseException] = []

    def engine_loop() -> None:
        hub = SessionHub()
        try:
            start.wait()
            for _ in range(6):
                with session_scope(pg_engine) as session:
                    rollouts.tick(session=session, hub=hub)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=engine_loop) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    with Session(pg_engine) as session:
        deploys = Counter(
            session.exec(select(Command.device_id).where(Command.kind == CommandKind.deploy)).all()
        )
        n_devices = len(session.exec(select(Device.id)).all())
    assert len(deploys) == n_devices == 36
    assert set(deploys.values()) == {1}, deploys.most_common(3)


@pytest.mark.postgres
def test_a_silent_controllers_devices_go_offline_and_only_theirs(pg_engine: Engine) -> None:
    old = utcnow() - timedelta(seconds=instances.STALE_S + 5)
    with session_scope(pg_engine) as session:
        session.add(ControllerInstance(id="dead", started_at=old, last_seen=old))
        session.add(ControllerInstance(id="alive"))
        session.add(Device(id="on-dead", connected=True, controller_id="dead"))
        session.add(Device(id="on-alive", connected=True, controller_id="alive"))
    with session_scope(pg_engine) as session:
        assert instances.beat(session=session, instance_id="me") == ["dead"]
    with Session(pg_engine) as session:
        assert not session.get(Device, "on-dead").connected
        assert session.get(Device, "on-alive").connected
        assert [i.id for i in instances.live(session=session)] == ["alive", "me"]
        # a late close from the process the device left does not put it offline
        fleet.record_connected(session=session, device_id="on-alive", hello=None, connected=False,
                               controller_id="dead")  # fmt: skip
        assert session.get(Device, "on-alive").connected


def test_a_second_controller_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'one.db'}"
    first = make_controller(tmp_path / "a", db, insecure=True)
    try:
        with pytest.raises(instances.DatabaseInUse, match="several controllers need PostgreSQL"):
            make_controller(tmp_path / "b", db, insecure=True)
    finally:
        first.stop()
    make_controller(tmp_path / "c", db, insecure=True).stop()  # the lock went with the first


@pytest.mark.postgres
def test_commands_and_revocations_reach_the_controller_holding_the_stream(
    postgres_url: str, tmp_path: Path
) -> None:
    """The agent's stream is on controller A; B (another process as far as PostgreSQL knows)
    creates a command for it and then revokes it: A's listener delivers both."""
    a = make_controller(tmp_path / "a", postgres_url, insecure=True, controller_id="ctl-a")
    b = make_controller(tmp_path / "b", postgres_url, insecure=True, controller_id="ctl-b", http=True)
    agent = None
    try:
        wait_until(lambda: a.bus.listening.is_set() and b.bus.listening.is_set(), 10, "both listening")
        agent = start_agent(a.grpc_target, tmp_path / "agent", "test-enrollment-token", name="d1")
        device_id = agent.device_id
        with Session(b.ctx.engine) as session:
            assert session.get(Device, device_id).controller_id == "ctl-a"
        with session_scope(b.ctx.engine) as session:
            command = commands.send_rollback(session=session, hub=b.ctx.hub, device_id=device_id,
                                             rollback_in=RollbackCreate(reason="from b"))  # fmt: skip
        done = commands.wait_for_commands(b.ctx.engine, [command.id], timeout_s=20)
        assert done[0].state.value == "succeeded", done[0].message
        assert ("rollback", "") in agent.executor.calls
        r = httpx.post(f"http://127.0.0.1:{b.http_port}/api/v1/devices/{device_id}/revoke",
                       headers={"Authorization": "Bearer test-api-token"}, timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text
        wait_until(lambda: not a.ctx.hub.is_connected(device_id), 10, "A closed the revoked stream")
        assert a.ctx.tokens.get(device_id) is None
    finally:
        if agent is not None:
            agent.stop()
        b.stop()
        a.stop()
