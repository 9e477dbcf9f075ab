"""Commands to devices: stored first (so a restarted controller resends them), then put on the
device's stream once the storing transaction has committed. Also the calls the closed loop
uses: send a benchmark, wait for its reports."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from google.protobuf import json_format
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller import crud
from controller.errors import InvalidInput
from controller.models import (
    BenchmarkCreate,
    CalibrateCreate,
    Command,
    CommandKind,
    CommandState,
    Result,
    RollbackCreate,
    SwitchCreate,
    new_id,
    utcnow,
)
from controller.services import bus
from controller.services.artifacts import artifact_ref
from controller.services.hub import SessionHub
from protos import fleet_pb2


def command_to_proto(command: Command) -> fleet_pb2.ControllerCommand:
    return json_format.Parse(command.payload, fleet_pb2.ControllerCommand())


def dispatch_after_commit(session: Session, hub: SessionHub, command: Command) -> None:
    """Put the command on the wire once (and only if) this session commits."""
    pending = session.info.setdefault("edgeloop_dispatch", [])
    if not pending:

        def _after_commit(sess: Session) -> None:
            for cmd in sess.info.pop("edgeloop_dispatch", []):
                hub.send(cmd.device_id, command_to_proto(cmd))

        def _after_rollback(sess: Session) -> None:
            sess.info.pop("edgeloop_dispatch", None)

        event.listen(session, "after_commit", _after_commit, once=True)
        event.listen(session, "after_soft_rollback", _after_rollback, once=True)
    pending.append(command)


def create_command(
    *,
    session: Session,
    hub: SessionHub,
    device_id: str,
    kind: CommandKind,
    body: fleet_pb2.Deploy
    | fleet_pb2.Benchmark
    | fleet_pb2.Switch
    | fleet_pb2.Rollback
    | fleet_pb2.Calibrate
    | fleet_pb2.Pipeline,
    model_version: str = "",
    rollout_id: str | None = None,
    flush: bool = True,
) -> Command:
    """Store a command and put it on the device's stream at commit. ``flush=False``: the caller
    flushes once for many (a rollout wave), an INSERT batch instead of one round trip each."""
    command_id = new_id()
    msg = fleet_pb2.ControllerCommand(command_id=command_id)
    getattr(msg, kind.value).CopyFrom(body)
    command = Command(
        id=command_id,
        device_id=device_id,
        kind=kind,
        payload=json_format.MessageToJson(msg, indent=None),
        model_version=model_version,
        rollout_id=rollout_id,
    )
    session.add(command)
    if flush:
        session.flush()
    dispatch_after_commit(session, hub, command)
    # the device's stream may be held by another controller process: it learns at this commit
    bus.publish(session, origin=hub.instance_id, kind=bus.COMMAND, device_id=device_id, command_id=command_id)
    return command


def send_benchmark(
    *, session: Session, hub: SessionHub, device_id: str, benchmark_in: BenchmarkCreate
) -> Command:
    """Ask one device to build and measure a model version (every backend/precision asked)."""
    _device(session, device_id)
    mv = crud.get_model_version(session=session, version=benchmark_in.model_version)
    body = fleet_pb2.Benchmark(
        artifact=artifact_ref(crud.get_artifact(session=session, artifact_id=mv.artifact_id), mv.version),
        backends=benchmark_in.backends,
        precisions=benchmark_in.precisions,
        scenarios=benchmark_in.scenarios,
        duration_ms=benchmark_in.duration_ms,
        round_id=benchmark_in.round_id,
    )
    if benchmark_in.evaluation_artifact_id:
        body.evaluation.CopyFrom(
            artifact_ref(crud.get_artifact(session=session, artifact_id=benchmark_in.evaluation_artifact_id))
        )
    if benchmark_in.calibration_artifact_id:
        body.calibration.CopyFrom(
            artifact_ref(crud.get_artifact(session=session, artifact_id=benchmark_in.calibration_artifact_id))
        )
    if "stream" in benchmark_in.scenarios and benchmark_in.stream_clip_artifact_id:
        body.stream_clip.CopyFrom(
            artifact_ref(crud.get_artifact(session=session, artifact_id=benchmark_in.stream_clip_artifact_id))
        )
        body.stream_counts.extend(benchmark_in.stream_counts)
        body.stream_step_s = benchmark_in.stream_step_s
    return create_command(
        session=session,
        hub=hub,
        device_id=device_id,
        kind=CommandKind.benchmark,
        body=body,
        model_version=mv.version,
    )


def _device(session: Session, device_id: str):  # noqa: ANN202
    device = crud.get_device(session=session, device_id=device_id)
    if device.revoked:
        raise InvalidInput(f"device {device_id} is revoked")
    return device


def send_calibrate(
    *, session: Session, hub: SessionHub, device_id: str, calibrate_in: CalibrateCreate
) -> Command:
    """Build (and for INT8 calibrate) an engine on the device without activating it."""
    _device(session, device_id)
    mv = crud.get_model_version(session=session, version=calibrate_in.model_version)
    body = fleet_pb2.Calibrate(
        artifact=artifact_ref(crud.get_artifact(session=session, artifact_id=mv.artifact_id), mv.version),
        backend=calibrate_in.backend,
        precision=calibrate_in.precision,
    )
    if calibrate_in.calibration_artifact_id:
        body.calibration.CopyFrom(
            artifact_ref(crud.get_artifact(session=session, artifact_id=calibrate_in.calibration_artifact_id))
        )
    return create_command(
        session=session,
        hub=hub,
        device_id=device_id,
        kind=CommandKind.calibrate,
        body=body,
        model_version=mv.version,
    )


def send_switch(*, session: Session, hub: SessionHub, device_id: str, switch_in: SwitchCreate) -> Command:
    """Make a version the device already holds the active one."""
    _device(session, device_id)
    crud.get_model_version(session=session, version=switch_in.model_version)
    return create_command(
        session=session,
        hub=hub,
        device_id=device_id,
        kind=CommandKind.switch,
        body=fleet_pb2.Switch(model_version=switch_in.model_version),
        model_version=switch_in.model_version,
    )


def send_rollback(
    *, session: Session, hub: SessionHub, device_id: str, rollback_in: RollbackCreate
) -> Command:
    _device(session, device_id)
    return create_command(
        session=session,
        hub=hub,
        device_id=device_id,
        kind=CommandKind.rollback,
        body=fleet_pb2.Rollback(reason=rollback_in.reason, to_version=rollback_in.to_version),
        model_version=rollback_in.to_version,
    )


MAX_PIPELINE_JSON = 64 * 1024  # a spec is a few hundred bytes; the device parses what it gets


def send_pipeline(
    *, session: Session, hub: SessionHub, device_id: str, action: str, name: str, spec: dict | None = None,
    source: dict | None = None, source_id: str = "",
) -> Command:  # fmt: skip
    """Create, update or delete a video pipeline on a device, or add/remove one of its sources
    while it runs (``fleet.Pipeline``; the agent's ``StreamManager`` does it and persists it)."""
    _device(session, device_id)
    spec_json = json.dumps(spec, separators=(",", ":")) if spec is not None else ""
    source_json = json.dumps(source, separators=(",", ":")) if source is not None else ""
    if len(spec_json) > MAX_PIPELINE_JSON or len(source_json) > MAX_PIPELINE_JSON:
        raise InvalidInput(f"pipeline spec over {MAX_PIPELINE_JSON} bytes")
    body = fleet_pb2.Pipeline(action=action, name=name, spec_json=spec_json, source_json=source_json,
                              source_id=source_id)  # fmt: skip
    return create_command(session=session, hub=hub, device_id=device_id, kind=CommandKind.pipeline, body=body)


def wait_for_commands(
    engine: Engine, command_ids: Sequence[str], *, timeout_s: float = 300.0, poll_s: float = 0.2
) -> list[Command]:
    """Block until every command is succeeded or failed (or the timeout); returns them all."""
    deadline = time.monotonic() + timeout_s
    ids = list(command_ids)
    while True:
        with Session(engine) as session:
            rows = list(session.exec(select(Command).where(col(Command.id).in_(ids))).all())
        if len(rows) == len(ids) and all(r.state.terminal for r in rows):
            return rows
        if time.monotonic() >= deadline:
            missing = [r.id for r in rows if not r.state.terminal]
            raise TimeoutError(f"commands not finished after {timeout_s:.0f}s: {missing}")
        time.sleep(poll_s)


def wait_for_reports(
    engine: Engine, command_ids: Sequence[str], *, timeout_s: float = 300.0, poll_s: float = 0.2
) -> list[Result]:
    """Wait for the commands to finish, then return the reports they produced (a failed command
    may have produced none: check ``Command.message``)."""
    wait_for_commands(engine, command_ids, timeout_s=timeout_s, poll_s=poll_s)
    with Session(engine) as session:
        rows, _ = crud.list_results(session=session, command_ids=list(command_ids))
        return rows


def mark(command: Command, state: CommandState, message: str = "", progress: float | None = None) -> None:
    command.state = state
    if message:
        command.message = message
    if progress is not None:
        command.progress = progress
    command.updated_at = utcnow()
