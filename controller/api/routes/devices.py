"""Devices: list and filter, inspect, tag, revoke, send a benchmark."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from fastapi import APIRouter, Query, Response
from sqlmodel import Session

from controller import crud
from controller.api.deps import ContextDep, SessionDep, json_response
from controller.errors import InvalidInput, NotFound
from controller.models import (
    BenchmarkCreate,
    CalibrateCreate,
    CommandPublic,
    CommandsPublic,
    DevicePublic,
    DeviceSeries,
    DevicesPublic,
    DeviceUpdate,
    EnrollmentTokenCreated,
    EnrollmentTokenPublic,
    PipelineCreate,
    PipelineGroupCreate,
    PipelineSourceCreate,
    RollbackCreate,
    SeriesPoint,
    SwitchCreate,
    TelemetryAggregatePublic,
)
from controller.services import bus, commands, enrollment, fleet
from controller.telemetry import WINDOW_S

router = APIRouter(prefix="/devices", tags=["devices"])


@router.get("/", response_model=DevicesPublic)
def list_devices(
    ctx: ContextDep,
    tag: str | None = None,
    hardware_class: str | None = None,
    online: bool | None = None,
    skip: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=10_000),
) -> Response:
    """A read: its own session in the handler (one thread-pool hand-off per request, not one for
    the session dependency's start and end besides), the page serialised once."""
    with Session(ctx.engine) as session:
        rows, count = crud.list_devices(
            session=session, tag=tag, hardware_class=hardware_class, online=online, skip=skip, limit=limit
        )
        return json_response(DevicesPublic(data=[crud.device_public(d) for d in rows], count=count))


@router.get("/{device_id}", response_model=DevicePublic)
def get_device(session: SessionDep, device_id: str) -> DevicePublic:
    return crud.device_public(crud.get_device(session=session, device_id=device_id))


@router.post("/pipelines", response_model=CommandsPublic, status_code=202)
def create_group_pipeline(
    session: SessionDep, ctx: ContextDep, group_in: PipelineGroupCreate
) -> CommandsPublic:
    """The same pipeline on every (not revoked) device with ``tag`` and/or ``hardware_class``."""
    if not group_in.tag and not group_in.hardware_class:
        raise InvalidInput("name the group: tag, hardware_class or both")
    rows, _ = crud.list_devices(session=session, tag=group_in.tag, hardware_class=group_in.hardware_class,
                                limit=10_000)  # fmt: skip
    sent = [commands.send_pipeline(session=session, hub=ctx.hub, device_id=d.id, action="create",
                                   name=_pipeline_name(group_in.spec), spec=group_in.spec)
            for d in rows if not d.revoked]  # fmt: skip
    return CommandsPublic(data=[CommandPublic.model_validate(c) for c in sent], count=len(sent))


def _pipeline_name(spec: dict) -> str:
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInput("the pipeline spec needs a name")
    return name


@router.post("/{device_id}/pipelines", response_model=CommandPublic, status_code=202)
def create_pipeline(
    session: SessionDep, ctx: ContextDep, device_id: str, pipeline_in: PipelineCreate
) -> CommandPublic:
    command = commands.send_pipeline(session=session, hub=ctx.hub, device_id=device_id, action="create",
                                     name=_pipeline_name(pipeline_in.spec), spec=pipeline_in.spec)  # fmt: skip
    return CommandPublic.model_validate(command)


@router.put("/{device_id}/pipelines/{name}", response_model=CommandPublic, status_code=202)
def update_pipeline(
    session: SessionDep, ctx: ContextDep, device_id: str, name: str, pipeline_in: PipelineCreate
) -> CommandPublic:
    spec = {**pipeline_in.spec, "name": pipeline_in.spec.get("name", name)}
    command = commands.send_pipeline(session=session, hub=ctx.hub, device_id=device_id, action="update",
                                     name=name, spec=spec)  # fmt: skip
    return CommandPublic.model_validate(command)


@router.delete("/{device_id}/pipelines/{name}", response_model=CommandPublic, status_code=202)
def delete_pipeline(session: SessionDep, ctx: ContextDep, device_id: str, name: str) -> CommandPublic:
    command = commands.send_pipeline(
        session=session, hub=ctx.hub, device_id=device_id, action="delete", name=name
    )
    return CommandPublic.model_validate(command)


@router.post("/{device_id}/pipelines/{name}/sources", response_model=CommandPublic, status_code=202)
def add_pipeline_source(
    session: SessionDep, ctx: ContextDep, device_id: str, name: str, source_in: PipelineSourceCreate
) -> CommandPublic:
    command = commands.send_pipeline(session=session, hub=ctx.hub, device_id=device_id, action="add_source",
                                     name=name, source=source_in.source)  # fmt: skip
    return CommandPublic.model_validate(command)


@router.delete(
    "/{device_id}/pipelines/{name}/sources/{source_id}", response_model=CommandPublic, status_code=202
)
def remove_pipeline_source(
    session: SessionDep, ctx: ContextDep, device_id: str, name: str, source_id: str
) -> CommandPublic:
    command = commands.send_pipeline(session=session, hub=ctx.hub, device_id=device_id, action="remove_source",
                                     name=name, source_id=source_id)  # fmt: skip
    return CommandPublic.model_validate(command)


@router.get("/{device_id}/pipelines")
def device_pipelines(session: SessionDep, ctx: ContextDep, device_id: str) -> dict:
    """The video pipelines the device last reported in its telemetry (docs/stream.md): per
    pipeline its model, total FPS and view URL, per source FPS, state, drops, reconnects, p99."""
    crud.get_device(session=session, device_id=device_id)  # 404 for an unknown id
    latest = ctx.streams.get(device_id) or {}
    return {"device_id": device_id, "reported_at": latest.get("ts"), "pipelines": latest.get("pipelines", [])}


@router.patch("/{device_id}", response_model=DevicePublic)
def update_device(session: SessionDep, device_id: str, device_in: DeviceUpdate) -> DevicePublic:
    device = crud.get_device(session=session, device_id=device_id)
    return crud.device_public(crud.update_device(session=session, device=device, device_in=device_in))


@router.post("/{device_id}/revoke", response_model=DevicePublic)
def revoke_device(session: SessionDep, ctx: ContextDep, device_id: str) -> DevicePublic:
    device = fleet.revoke_device(session=session, cache=ctx.tokens, device_id=device_id)
    bus.publish(session, origin=ctx.hub.instance_id, kind=bus.KICK, device_id=device_id)  # other controllers
    session.commit()
    ctx.hub.kick(device_id)  # its open streams end now; its certificate is refused from now on
    if ctx.broker_accounts is not None:
        ctx.broker_accounts.remove(device_id)
    return crud.device_public(device)


@router.post("/{device_id}/reenrol", response_model=EnrollmentTokenCreated, status_code=201)
def reenrol_device(session: SessionDep, ctx: ContextDep, device_id: str) -> EnrollmentTokenCreated:
    """The operator re-enrols a device (new hardware, lost key): its current credential is
    revoked, and the one-use token returned enrols exactly this id again (agent run
    --enrollment-token-file ... on the device, with its old credentials removed)."""
    fleet.revoke_device(session=session, cache=ctx.tokens, device_id=device_id)
    row, token = enrollment.reenrol_token(session=session, device_id=device_id)
    bus.publish(session, origin=ctx.hub.instance_id, kind=bus.KICK, device_id=device_id)  # other controllers
    session.commit()
    ctx.hub.kick(device_id)
    if ctx.broker_accounts is not None:
        ctx.broker_accounts.remove(device_id)
    return EnrollmentTokenCreated(**EnrollmentTokenPublic.model_validate(row).model_dump(), token=token)


@router.post("/{device_id}/benchmark", response_model=CommandPublic, status_code=202)
def benchmark_device(
    session: SessionDep, ctx: ContextDep, device_id: str, benchmark_in: BenchmarkCreate
) -> CommandPublic:
    command = commands.send_benchmark(
        session=session, hub=ctx.hub, device_id=device_id, benchmark_in=benchmark_in
    )
    return CommandPublic.model_validate(command)


@router.post("/{device_id}/calibrate", response_model=CommandPublic, status_code=202)
def calibrate_device(
    session: SessionDep, ctx: ContextDep, device_id: str, calibrate_in: CalibrateCreate
) -> CommandPublic:
    command = commands.send_calibrate(
        session=session, hub=ctx.hub, device_id=device_id, calibrate_in=calibrate_in
    )
    return CommandPublic.model_validate(command)


@router.post("/{device_id}/switch", response_model=CommandPublic, status_code=202)
def switch_device(
    session: SessionDep, ctx: ContextDep, device_id: str, switch_in: SwitchCreate
) -> CommandPublic:
    command = commands.send_switch(session=session, hub=ctx.hub, device_id=device_id, switch_in=switch_in)
    return CommandPublic.model_validate(command)


@router.post("/{device_id}/rollback", response_model=CommandPublic, status_code=202)
def rollback_device(
    session: SessionDep, ctx: ContextDep, device_id: str, rollback_in: RollbackCreate
) -> CommandPublic:
    command = commands.send_rollback(
        session=session, hub=ctx.hub, device_id=device_id, rollback_in=rollback_in
    )
    return CommandPublic.model_validate(command)


@router.get("/{device_id}/commands/{command_id}", response_model=CommandPublic)
def device_command(session: SessionDep, device_id: str, command_id: str) -> CommandPublic:
    command = crud.get_command(session=session, command_id=command_id)
    if command.device_id != device_id:
        raise NotFound(f"command {command_id!r} not found on device {device_id!r}")
    return CommandPublic.model_validate(command)


@router.get("/{device_id}/commands", response_model=CommandsPublic)
def device_commands(
    session: SessionDep, device_id: str, limit: int = Query(100, ge=1, le=1000)
) -> CommandsPublic:
    crud.get_device(session=session, device_id=device_id)
    rows = crud.list_commands(session=session, device_id=device_id, limit=limit)
    return CommandsPublic(data=[CommandPublic.model_validate(c) for c in rows], count=len(rows))


@router.get("/{device_id}/telemetry", response_model=list[TelemetryAggregatePublic])
def device_telemetry(session: SessionDep, device_id: str) -> list[TelemetryAggregatePublic]:
    crud.get_device(session=session, device_id=device_id)
    return [
        TelemetryAggregatePublic.model_validate(t)
        for t in crud.list_telemetry(session=session, device_id=device_id)
    ]


@router.get("/{device_id}/series", response_model=DeviceSeries)
def device_series(
    session: SessionDep, device_id: str, minutes: int = Query(default=60, ge=1, le=1440)
) -> DeviceSeries:
    """The last ``minutes`` of the device's telemetry, one point per one-minute window (FPS,
    latency p99, CPU, memory, temperature): what the dashboard charts."""
    crud.get_device(session=session, device_id=device_id)
    since = datetime.now(timezone.utc) - timedelta(minutes=minutes)
    points = [
        SeriesPoint(
            t=w.window_start,
            fps=w.fps_mean,
            latency_p99_ms=w.latency_p99_ms_max,
            cpu_percent=w.cpu_percent_mean,
            memory_bytes=w.memory_bytes_max,
            temperature_c=w.temperature_c_max,
            stream_fps=w.stream_fps_mean,
            requests=w.requests,
        )  # fmt: skip
        for w in crud.telemetry_since(session=session, device_id=device_id, since=since)
    ]
    return DeviceSeries(device_id=device_id, window_s=WINDOW_S, since=since, points=points)
