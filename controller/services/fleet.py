"""What the gRPC fleet service does, as plain functions: enrol devices, check their
credentials, and record what they say (hello, command status, measured reports)."""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import threading
from datetime import datetime, timezone

from google.protobuf import json_format
from sqlalchemy import bindparam, case, or_
from sqlmodel import Session, col, select, update

from controller import crud
from controller.errors import ControllerError, InvalidInput, PermissionDenied, Unauthenticated
from controller.models import (
    Command,
    CommandKind,
    CommandState,
    Device,
    Result,
    utcnow,
)
from controller.services.commands import mark
from controller.services.hub import HeartbeatSeen
from controller.services.limits import check_device_message
from protos import fleet_pb2

log = logging.getLogger(__name__)
ACCURACY_KEYS = ("top1", "accuracy", "map", "map50", "top5")


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenCache:
    """device_id -> token hash of enrolled, not revoked devices (saves a DB read per call)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._hashes: dict[str, str] = {}

    def get(self, device_id: str) -> str | None:
        with self._lock:
            return self._hashes.get(device_id)

    def put(self, device_id: str, token_hash: str) -> None:
        with self._lock:
            self._hashes[device_id] = token_hash

    def drop(self, device_id: str) -> None:
        with self._lock:
            self._hashes.pop(device_id, None)


def apply_registration(device: Device, request: fleet_pb2.RegisterRequest) -> Device:
    """What a Register says about the device (name, hardware, capabilities, tags) onto its row."""
    hw = request.hardware
    if request.tags:
        device.tags = sorted(set(device.tags) | set(request.tags))
    device.name = request.name or device.name or hw.hostname
    device.hardware_class = hw.hardware_class or "unknown"
    device.hardware_fingerprint = hw.fingerprint
    device.hardware = json_format.MessageToDict(hw, preserving_proto_field_name=True)
    device.capabilities = [
        json_format.MessageToDict(
            c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for c in request.capabilities
    ]
    device.agent_version = request.agent_version
    device.last_seen = utcnow()
    return device


def cert_secret(serial: int) -> str:
    """What ``Device.token_hash`` hashes in TLS mode: the serial of the one valid certificate."""
    return f"cert:{serial}"


def authenticate(*, session: Session, cache: TokenCache, device_id: str, token: str) -> None:
    """Raise Unauthenticated / PermissionDenied unless the credentials are an enrolled device's."""
    if not device_id or not token:
        raise Unauthenticated("missing device credentials (x-edgeloop-device, authorization)")
    token_hash = hash_token(token)
    known = cache.get(device_id)
    if known is not None and hmac.compare_digest(known, token_hash):
        return
    device = session.get(Device, device_id)
    if device is None:
        raise PermissionDenied(f"unknown device {device_id!r}")
    if device.revoked:
        raise PermissionDenied(f"device {device_id} is revoked")
    if not hmac.compare_digest(device.token_hash, token_hash):
        raise Unauthenticated("invalid device token")
    cache.put(device_id, token_hash)


def revoke_device(*, session: Session, cache: TokenCache, device_id: str) -> Device:
    device = crud.get_device(session=session, device_id=device_id)
    device.revoked = True
    device.connected = False
    device.controller_id = None
    device.token_hash = ""
    session.add(device)
    for command in crud.open_commands_for_device(session=session, device_id=device_id):
        mark(command, CommandState.failed, "device revoked")
        session.add(command)
    session.flush()
    cache.drop(device_id)
    return device


def record_connected(
    *,
    session: Session,
    device_id: str,
    hello: fleet_pb2.Hello | None,
    connected: bool,
    controller_id: str = "",
) -> list[Command]:
    """Stream opened (with its hello) or closed, on the controller process ``controller_id``.
    On open, returns the commands to (re)send. A close is recorded only by the process that
    holds the stream now: a device that already moved to another controller stays connected."""
    device = crud.get_device(session=session, device_id=device_id)
    if not connected and controller_id and device.controller_id not in (None, controller_id):
        return []
    device.connected = connected
    device.controller_id = (controller_id or None) if connected else None
    device.last_seen = utcnow()
    if hello is not None:
        check_device_message(hello, "hello")
        device.agent_version = hello.agent_version or device.agent_version
        device.active_version = hello.active_version
        device.candidate_version = hello.candidate_version
        device.previous_version = hello.previous_version
    session.add(device)
    session.flush()
    return crud.open_commands_for_device(session=session, device_id=device_id) if connected else []


def record_status(*, session: Session, device_id: str, status: fleet_pb2.CommandStatus) -> Command | None:
    """A command's progress, accepted only from the device the command was sent to."""
    check_device_message(status, "status")
    command = _apply_status(
        session=session, device_id=device_id, status=status, command=session.get(Command, status.command_id)
    )
    session.flush()
    return command


def record_statuses(*, session: Session, seen: list[tuple[str, fleet_pb2.CommandStatus]]) -> int:
    """Many (device, status) pairs in the order they came, in this one transaction: their
    commands (and the devices whose active version may change) read in batches of 500, one
    flush at the end. A status that names an unknown state is logged and skipped, the others
    are written. Returns how many changed a command. The caller checked each with
    ``check_device_message`` when it arrived."""
    ids = sorted({st.command_id for _, st in seen if st.command_id})
    commands = {c.id: c for c in crud.load_by_ids(session=session, model=Command, ids=ids)}
    held = crud.load_by_ids(  # noqa: F841 - held: get_device below is answered from the identity map
        session=session,
        model=Device,
        ids=sorted({d for d, st in seen if st.state == CommandState.succeeded.value}),
    )
    changed = 0
    for device_id, status in seen:
        try:
            before = commands.get(status.command_id)
            state = before.state if before is not None else None
            done = _apply_status(session=session, device_id=device_id, status=status, command=before)
            changed += done is not None and done.state != state
        except InvalidInput as exc:
            log.warning("bad status from %s: %s", device_id, exc.message)
    session.flush()
    return changed


def _apply_status(
    *, session: Session, device_id: str, status: fleet_pb2.CommandStatus, command: Command | None
) -> Command | None:
    if command is None or command.device_id != device_id:
        log.warning("status for a command not sent to %s (%.64s) ignored", device_id, status.command_id)
        return None
    if command.state.terminal:  # a resent final status after a reconnect
        return command
    try:
        state = CommandState(status.state)
    except ValueError as exc:
        raise InvalidInput(f"unknown command state {status.state!r}") from exc
    mark(command, state, status.message, status.progress)
    session.add(command)
    if state == CommandState.succeeded and command.kind in (
        CommandKind.deploy,
        CommandKind.switch,
        CommandKind.rollback,
    ):
        device = crud.get_device(session=session, device_id=device_id)
        if status.model_version or command.kind != CommandKind.rollback:
            active = status.model_version or command.model_version
            if active and active != device.active_version:
                device.previous_version = device.active_version
                device.active_version = active
                # a heartbeat received before this status must not put the old version back
                # (flush_heartbeats writes versions only from heartbeats newer than last_seen)
                device.last_seen = utcnow()
        session.add(device)
    return command


def primary_accuracy(metrics: dict[str, float], preferred: str = "") -> float | None:
    """The metric gates and the matrix use, in percent (fractions 0..1 are scaled)."""
    if not metrics:
        return None
    key = preferred if preferred in metrics else next((k for k in ACCURACY_KEYS if k in metrics), None)
    if key is None:
        key = sorted(metrics)[0]
    value = float(metrics[key])
    return value * 100.0 if all(0.0 <= float(v) <= 1.0 for v in metrics.values()) else value


MEASURING_KINDS = (CommandKind.deploy, CommandKind.benchmark, CommandKind.calibrate)


def command_for_report(*, session: Session, device_id: str, report: fleet_pb2.Report) -> Command:
    """The command a report answers. A report is accepted only for a command that measures
    (deploy, benchmark, calibrate), that was sent to this very device, and about the model
    version (and artifact) the command named: a device cannot write results for another
    device's command, nor for models it was never asked to measure."""
    if not report.command_id:
        raise PermissionDenied("a report must name the command it answers (command_id)")
    command = session.get(Command, report.command_id)
    if command is None or command.device_id != device_id:
        # the same answer for "no such command" and "another device's": no oracle for ids
        raise PermissionDenied(f"command {report.command_id!r} was not sent to this device")
    if command.kind not in MEASURING_KINDS:
        raise PermissionDenied(f"command {command.id} ({command.kind.value}) does not ask for a report")
    if command.model_version and report.model_version != command.model_version:
        raise PermissionDenied(
            f"command {command.id} is about {command.model_version!r}, not {report.model_version!r}"
        )
    if report.artifact_id and report.artifact_id not in command.payload:
        raise PermissionDenied(f"artifact {report.artifact_id!r} is not the one command {command.id} sent")
    return command


def artifact_sent_to(*, session: Session, device_id: str, artifact_id: str) -> bool:
    """Whether some command sent to this device named the artifact (model or shard): the only
    artifacts a device may download."""
    if not artifact_id or '"' in artifact_id or "\\" in artifact_id:
        return False
    quoted = f'"{artifact_id}"'  # an id as a JSON string value in the command's payload
    row = session.exec(
        select(Command.id)
        .where(Command.device_id == device_id)
        .where(col(Command.payload).contains(quoted, autoescape=True))
    ).first()
    return row is not None


def record_report(*, session: Session, device_id: str, report: fleet_pb2.Report) -> Result:
    check_device_message(report, "report")
    if not report.model_version:
        raise InvalidInput("report needs model_version")
    device = crud.get_device(session=session, device_id=device_id)
    command_for_report(session=session, device_id=device_id, report=report)
    if report.command_id:  # a report resent after a lost acknowledgement is the same report
        same = session.exec(
            select(Result)
            .where(Result.command_id == report.command_id)
            .where(Result.device_id == device_id)
            .where(Result.model_version == report.model_version)
            .where(Result.backend == report.backend)
            .where(Result.precision == report.precision)
        ).first()
        if same is not None:
            return same
    scenarios = [
        json_format.MessageToDict(
            s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        for s in report.scenarios
    ]
    engine_runs = [s for s in report.scenarios if s.scenario != "stream"]  # LoadGen's; streams below
    by_name = {s.scenario: s for s in engine_runs}
    valid_fps = [s.throughput_fps for s in engine_runs if s.throughput_fps > 0]
    fps = (
        by_name["offline"].throughput_fps if "offline" in by_name else (max(valid_fps) if valid_fps else None)
    )
    lat = by_name.get("singlestream") or (engine_runs[0] if engine_runs else None)
    if report.stream_fps < 0 or report.stream_capacity < 0 or not math.isfinite(report.stream_fps):
        raise InvalidInput("report: stream_fps and stream_capacity must be finite and >= 0")
    result = Result(
        device_id=device_id,
        hardware_class=device.hardware_class,
        model_version=report.model_version,
        backend=report.backend,
        precision=report.precision,
        accuracy=primary_accuracy(dict(report.accuracy)),
        fps=fps or None,
        latency_p50_ms=lat.latency_p50_ms if lat else None,
        latency_p90_ms=lat.latency_p90_ms if lat else None,
        latency_p99_ms=lat.latency_p99_ms if lat else None,
        peak_memory_bytes=report.peak_memory_bytes,
        round_id=report.round_id,
        command_id=report.command_id,
        artifact_id=report.artifact_id,
        metrics=dict(report.accuracy),
        scenarios=scenarios,
        errors=list(report.errors),
        build_time_s=report.build_time_s,
        calibration_time_s=report.calibration_time_s,
        engine_key=report.engine_key,
        stream_capacity=report.stream_capacity if report.stream_fps > 0 else None,
        stream_fps=report.stream_fps or None,
    )
    session.add(result)
    session.flush()
    return result


def record_reports(
    *, session: Session, seen: list[tuple[str, fleet_pb2.Report]]
) -> list[Result | ControllerError]:
    """Many devices' reports in this one transaction, each checked and stored as
    ``record_report`` does, each with its own outcome: its result, or the error that refused it
    (raised before it wrote anything, so one refused report leaves the others standing). The
    devices and commands they name are read first, 500 at a time."""
    held = [  # noqa: F841 - held: record_report's gets are answered from the identity map
        crud.load_by_ids(session=session, model=Device, ids=sorted({d for d, _ in seen})),
        crud.load_by_ids(
            session=session, model=Command, ids=sorted({r.command_id for _, r in seen if r.command_id})
        ),
    ]
    out: list[Result | ControllerError] = []
    for device_id, report in seen:
        try:
            out.append(record_report(session=session, device_id=device_id, report=report))
        except ControllerError as exc:
            out.append(exc)
    return out


def flush_heartbeats(*, session: Session, seen: dict[str, HeartbeatSeen]) -> None:
    """The heartbeats seen since the last flush, as one batched UPDATE (an executemany: one round
    trip per batch, not one statement per heartbeat).

    A heartbeat is written only if it was received after the device's ``last_seen``. A command
    status that changed the active version, and a hello, set ``last_seen`` when they are
    recorded. So a heartbeat that was waiting in the buffer from before them is dropped: it would
    put back the versions the device had before the switch. The next rollout would then find no
    baseline and gate the candidate against nothing."""
    rows = [
        {"b_id": device_id, "b_seen": datetime.fromtimestamp(hb.ts, timezone.utc),
         "b_active": hb.active_version, "b_candidate": hb.candidate_version,
         "b_previous": hb.previous_version}
        for device_id, hb in seen.items()
    ]  # fmt: skip
    if not rows:
        return
    table = Device.__table__  # type: ignore[attr-defined]
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .where(or_(table.c.last_seen.is_(None), table.c.last_seen <= bindparam("b_seen")))
        .values(
            last_seen=bindparam("b_seen"),
            active_version=bindparam("b_active"),
            candidate_version=bindparam("b_candidate"),
            previous_version=bindparam("b_previous"),
        )
    )
    session.connection().execute(stmt, rows)  # a device deleted meanwhile matches no row


def flush_progress(*, session: Session, seen: dict[str, fleet_pb2.CommandStatus]) -> None:
    """The buffered "running" statuses as one executemany UPDATE. Each touches only a command
    of the device that sent it, and only while that command is not finished (a final status
    written meanwhile is never put back to running)."""
    if not seen:
        return
    table = Command.__table__  # type: ignore[attr-defined]
    stmt = (
        update(table)
        .where(table.c.id == bindparam("b_id"))
        .where(table.c.device_id == bindparam("b_device"))
        .where(table.c.state != CommandState.succeeded)  # no IN (...) in an executemany
        .where(table.c.state != CommandState.failed)
        .values(
            state=CommandState.running,
            progress=bindparam("b_progress"),
            message=case((bindparam("b_message") == "", table.c.message), else_=bindparam("b_message")),
            updated_at=bindparam("b_now"),
        )
    )
    now = utcnow()
    rows = [
        {"b_id": st.command_id, "b_device": device_id, "b_progress": st.progress, "b_message": st.message,
         "b_now": now}
        for device_id, st in seen.items()
    ]  # fmt: skip
    session.connection().execute(stmt, rows)


def device_ids_connected(*, session: Session) -> list[str]:
    return list(session.exec(select(Device.id).where(col(Device.connected).is_(True))).all())
