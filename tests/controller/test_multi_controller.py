"""Several controllers on one PostgreSQL: a rollout step is taken by one process only.

The claim is a row lock (``FOR UPDATE SKIP LOCKED``) held for the step's transaction, so the
tests run the real engine code (``rollouts.claim_rollouts`` / ``rollouts.tick``) from several
threads, each with its own connection, on the test PostgreSQL: the same as several processes
as far as the database can tell.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from ctl_helpers import make_controller, start_agent, wait_until
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select, update

from controller.broker import start_local_broker
from controller.broker_auth import BrokerAccounts
from controller.db import make_engine, migrate, session_scope
from controller.metrics import Metrics
from controller.models import (
    Artifact,
    Command,
    CommandKind,
    CommandState,
    ControllerInstance,
    Device,
    ModelVersion,
    RollbackCreate,
    RolloutCreate,
    Selector,
    Strategy,
    TelemetryAggregate,
    utcnow,
)
from controller.services import commands, fleet, instances, rollouts
from controller.services.bus_listener import BusListener
from controller.services.hub import SessionHub, StreamSession
from controller.telemetry import TelemetryIngest
from protos import fleet_pb2


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
        session.add(Device(id="on-nobody", connected=True, controller_id="gone-before"))
    with session_scope(pg_engine) as session:
        assert instances.beat(session=session, instance_id="me") == ["dead"]
    with Session(pg_engine) as session:
        assert not session.get(Device, "on-dead").connected
        assert not session.get(Device, "on-nobody").connected  # its process left no row
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

        def holder() -> str | None:
            with Session(b.ctx.engine) as session:
                return session.get(Device, device_id).controller_id

        wait_until(lambda: holder() == "ctl-a", 10, "A recorded the stream as its own")
        auth = {"Authorization": "Bearer test-api-token"}
        listed = httpx.get(
            f"http://127.0.0.1:{b.http_port}/api/v1/controllers/", headers=auth, timeout=10
        ).json()
        assert [(c["id"], c["streams"], c["this"]) for c in listed] == [
            ("ctl-a", 1, False),
            ("ctl-b", 0, True),
        ]
        with session_scope(b.ctx.engine) as session:
            command = commands.send_rollback(session=session, hub=b.ctx.hub, device_id=device_id,
                                             rollback_in=RollbackCreate(reason="from b"))  # fmt: skip
        done = commands.wait_for_commands(b.ctx.engine, [command.id], timeout_s=20)
        assert done[0].state.value == "succeeded", done[0].message
        assert ("rollback", "") in agent.executor.calls
        r = httpx.post(f"http://127.0.0.1:{b.http_port}/api/v1/devices/{device_id}/revoke",
                       headers=auth, timeout=10)  # fmt: skip
        assert r.status_code == 200, r.text
        wait_until(lambda: not a.ctx.hub.is_connected(device_id), 10, "A closed the revoked stream")
        assert a.ctx.tokens.get(device_id) is None
    finally:
        if agent is not None:
            agent.stop()
        b.stop()
        a.stop()


@pytest.mark.postgres
@pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs the mosquitto binary")
def test_two_controllers_share_the_telemetry(pg_engine: Engine, tmp_path: Path) -> None:
    """A shared subscription on the controllers' own Mosquitto (its accounts and ACL): the
    broker splits one device's metrics between two ingests, and the window they both write
    holds every sample once."""
    accounts = BrokerAccounts(tmp_path / "mqtt")
    broker = start_local_broker("mosquitto", passwd=accounts.passwd, acl=accounts.acl)
    accounts.reload = broker.reload
    accounts.set("dev-t", "pw-t")
    with session_scope(pg_engine) as session:
        session.add(Device(id="dev-t"))
    url = accounts.controller_url(broker.host, broker.port)
    ingests = [
        TelemetryIngest(
            engine=pg_engine,
            metrics=Metrics(),
            url=url,
            client_id=f"ctl-{i}",
            share_group="edgeloop-controllers",
        ).start()  # fmt: skip
        for i in range(2)
    ]
    device = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev-t")
    try:
        assert all(i.connected.wait(15) for i in ingests), "the controller account subscribes to $share"
        device.username_pw_set("dev-t", "pw-t")
        device.connect(broker.host, broker.port)
        device.loop_start()
        values = [float(v) for v in range(40)]
        for fps in values:
            msg = json.dumps({"device_id": "dev-t", "fps": fps, "cpu_percent": 10.0})
            device.publish("edgeloop/devices/dev-t/metrics", msg, qos=1).wait_for_publish(5)

        def got(i: TelemetryIngest) -> float:
            return i.metrics.telemetry_messages.labels("metrics")._value.get()

        wait_until(lambda: sum(got(i) for i in ingests) == len(values), 15, "every message ingested once")
        assert all(got(i) > 0 for i in ingests), "the broker gave each controller a share"
        for i in ingests:
            i.flush_windows()
        for i in ingests:  # a second write of the same windows adds nothing
            i.flush_windows()
        with Session(pg_engine) as session:
            rows = session.exec(
                select(TelemetryAggregate).where(TelemetryAggregate.device_id == "dev-t")
            ).all()
        assert sum(r.samples for r in rows) == len(values)
        assert sum(r.fps_mean * r.samples for r in rows) == pytest.approx(sum(values))
    finally:
        device.loop_stop()
        for i in ingests:
            i.stop()
        broker.stop()


@pytest.mark.postgres
def test_the_bus_delivers_only_what_this_process_should(pg_engine: Engine) -> None:
    """A batch of notifications: only open commands of devices whose streams are here, only
    the command the notification names for that very device; unreadable ones and this
    process's own are ignored; a kick reaches ``on_kick``."""
    ids: dict[str, str] = {}
    with session_scope(pg_engine) as session:
        session.add_all([Device(id="held"), Device(id="other")])
        session.flush()
        hub = SessionHub("me")
        for cid, device, state in (("c-open", "held", "pending"), ("c-done", "held", "succeeded"),
                                   ("c-other", "other", "pending")):  # fmt: skip
            cmd = commands.create_command(session=session, hub=hub, device_id=device, kind=CommandKind.switch,
                                          body=fleet_pb2.Switch(model_version="m:2"))  # fmt: skip
            session.flush()
            session.exec(update(Command).where(Command.id == cmd.id).values(state=state))
            ids[cid] = cmd.id
    loop = asyncio.new_event_loop()
    queue: asyncio.Queue = asyncio.Queue()
    hub.attach(StreamSession(device_id="held", loop=loop, queue=queue))
    kicked: list[str] = []
    listener = BusListener(pg_engine, hub, on_kick=kicked.append)

    def note(origin: str, kind: str, device: str, command: str = "") -> str:
        return json.dumps({"o": origin, "k": kind, "d": device, "c": ids.get(command, "")})

    listener.handle_batch([
        "not json", json.dumps({"o": "x"}), note("me", "command", "held", "c-open"),  # own: done already
        note("peer", "command", "held", "c-open"), note("peer", "command", "held", "c-done"),
        note("peer", "command", "held", "c-other"),  # another device's command named for this one
        note("peer", "command", "other", "c-other"),  # a stream held elsewhere
        note("peer", "kick", "other"),
    ])  # fmt: skip
    loop.run_until_complete(asyncio.sleep(0))
    sent = []
    while not queue.empty():
        sent.append(queue.get_nowait().command_id)
    loop.close()
    assert sent == [ids["c-open"]] and kicked == ["other"] and listener.received == 5


def test_progress_statuses_written_in_a_batch_touch_only_the_senders_open_commands(db_url: str) -> None:
    """ "running" statuses are buffered and flushed together (``fleet.flush_progress``): one
    device cannot move another's command, a finished command stays finished, an empty message
    keeps the last one."""
    engine = make_engine(db_url)
    migrate(engine)
    try:
        hub = SessionHub("me")
        with session_scope(engine) as session:
            session.add_all([Device(id="dev-a"), Device(id="dev-b")])
            session.flush()
            mine, done = (commands.create_command(session=session, hub=hub, device_id="dev-a",
                                                  kind=CommandKind.switch, body=fleet_pb2.Switch(model_version="m"))
                          for _ in range(2))  # fmt: skip
            done.state = CommandState.succeeded

        def status(command_id: str, message: str, progress: float) -> fleet_pb2.CommandStatus:
            return fleet_pb2.CommandStatus(
                command_id=command_id, state="running", message=message, progress=progress
            )

        def flush(seen: dict[str, fleet_pb2.CommandStatus]) -> None:
            with session_scope(engine) as session:
                fleet.flush_progress(session=session, seen=seen)

        flush({"dev-a": status(mine.id, "downloading", 0.3), "dev-b": status(mine.id, "forged", 0.9)})
        flush({"dev-a": status(done.id, "again", 0.1)})
        flush({"dev-a": status(mine.id, "", 0.5)})
        with Session(engine) as session:
            row, finished = session.get(Command, mine.id), session.get(Command, done.id)
            assert (row.state, row.message, row.progress) == (CommandState.running, "downloading", 0.5)
            assert finished.state == CommandState.succeeded and finished.message == ""
    finally:
        engine.dispose()
