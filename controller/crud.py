"""Reads and writes of single entities, keyword-only; routes and services call these.

Functions here add and flush but never commit: the caller's unit of work (the request's session
dependency or ``db.session_scope``) commits once, so a failure leaves nothing half-written.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from controller.errors import NotFound
from controller.models import (
    Artifact,
    Command,
    CommandState,
    Deployment,
    DeploymentPublic,
    DeploymentState,
    Device,
    DevicePublic,
    DeviceUpdate,
    Job,
    JobCreate,
    ModelVersion,
    ModelVersionPublic,
    Result,
    Rollout,
    RolloutPublic,
    TelemetryAggregate,
    utcnow,
)

T = TypeVar("T")


# ---------------------------------------------------------------- devices
def get_device(*, session: Session, device_id: str) -> Device:
    device = session.get(Device, device_id)
    if device is None:
        raise NotFound(f"device {device_id!r} not found")
    return device


def list_devices(
    *,
    session: Session,
    tag: str | None = None,
    hardware_class: str | None = None,
    online: bool | None = None,
    include_revoked: bool = True,
    skip: int = 0,
    limit: int = 1000,
) -> tuple[list[Device], int]:
    stmt = select(Device)
    if hardware_class:
        stmt = stmt.where(Device.hardware_class == hardware_class)
    if not include_revoked:
        stmt = stmt.where(col(Device.revoked).is_(False))
    if online is not None:
        is_online = (col(Device.connected).is_(True) | (Device.telemetry_state == "online")) & col(
            Device.revoked
        ).is_(False)
        stmt = stmt.where(is_online if online else ~is_online)
    stmt = stmt.order_by(col(Device.enrolled_at), col(Device.id))
    if tag:  # JSON list: filtered here so SQLite and PostgreSQL behave the same
        rows = [d for d in session.exec(stmt).all() if tag in (d.tags or [])]
        return rows[skip : skip + limit], len(rows)
    count = session.exec(select(func.count()).select_from(stmt.order_by(None).subquery())).one()
    return list(session.exec(stmt.offset(skip).limit(limit)).all()), int(count)


def update_device(*, session: Session, device: Device, device_in: DeviceUpdate) -> Device:
    device.sqlmodel_update(device_in.model_dump(exclude_unset=True))
    session.add(device)
    session.flush()
    return device


def device_public(device: Device) -> DevicePublic:
    return DevicePublic.model_validate(device)


# ---------------------------------------------------------------- artifacts and models
def get_artifact(*, session: Session, artifact_id: str) -> Artifact:
    artifact = session.get(Artifact, artifact_id)
    if artifact is None:
        raise NotFound(f"artifact {artifact_id!r} not found")
    return artifact


def get_model_version(*, session: Session, version: str) -> ModelVersion:
    mv = session.exec(select(ModelVersion).where(ModelVersion.version == version)).first()
    if mv is None:
        raise NotFound(f"model version {version!r} not found")
    return mv


def find_model_version(*, session: Session, version: str) -> ModelVersion | None:
    return session.exec(select(ModelVersion).where(ModelVersion.version == version)).first()


def list_model_versions(
    *, session: Session, name: str | None = None, skip: int = 0, limit: int = 1000
) -> tuple[list[ModelVersion], int]:
    stmt = select(ModelVersion)
    count_stmt = select(func.count()).select_from(ModelVersion)
    if name:
        stmt = stmt.where(ModelVersion.name == name)
        count_stmt = count_stmt.where(ModelVersion.name == name)
    rows = session.exec(stmt.order_by(col(ModelVersion.created_at)).offset(skip).limit(limit)).all()
    return list(rows), int(session.exec(count_stmt).one())


def model_version_public(*, session: Session, mv: ModelVersion) -> ModelVersionPublic:
    artifact = session.get(Artifact, mv.artifact_id)
    out = ModelVersionPublic.model_validate(mv)
    if artifact is not None:
        out.sha256, out.size_bytes = artifact.sha256, artifact.size_bytes
    return out


# ---------------------------------------------------------------- rollouts
def get_rollout(*, session: Session, rollout_id: str, lock: bool = False) -> Rollout:
    """``lock``: hold the row until commit (PostgreSQL ``FOR UPDATE``; SQLite has one writer
    anyway), so an operator action waits for a rollout step in flight on any controller."""
    rollout = session.get(Rollout, rollout_id, with_for_update=True if lock else None)
    if rollout is None:
        raise NotFound(f"rollout {rollout_id!r} not found")
    return rollout


def list_deployments(
    *, session: Session, rollout_id: str, skip: int = 0, limit: int | None = None
) -> list[Deployment]:
    stmt = (
        select(Deployment)
        .where(Deployment.rollout_id == rollout_id)
        .order_by(col(Deployment.wave), col(Deployment.device_id))
        .offset(skip)
    )
    if limit is not None:
        stmt = stmt.limit(limit)
    return list(session.exec(stmt).all())


def rollout_public(
    *, session: Session, rollout: Rollout, with_deployments: bool = True, skip: int = 0, limit: int = 1000
) -> RolloutPublic:
    """The rollout, its per-state counts and waves (counted by the database: no deployment row
    loaded) and, ``with_deployments``, a page of its deployments (``skip``/``limit``, in wave and
    device order; ``counts`` sums to their total)."""
    out = RolloutPublic.model_validate(rollout)
    rows = session.exec(
        select(Deployment.state, func.count(), func.max(Deployment.wave))
        .where(Deployment.rollout_id == rollout.id)
        .group_by(col(Deployment.state))
    ).all()
    out.counts = {DeploymentState(state).value: int(n) for state, n, _ in rows}
    out.waves_total = (max(int(w) for _, _, w in rows) + 1) if rows else 0
    if with_deployments:
        page = list_deployments(session=session, rollout_id=rollout.id, skip=skip, limit=limit)
        out.deployments = [DeploymentPublic.model_validate(d) for d in page]
    return out


def list_rollouts(*, session: Session, skip: int = 0, limit: int = 100) -> tuple[list[Rollout], int]:
    rows = session.exec(
        select(Rollout).order_by(col(Rollout.created_at).desc()).offset(skip).limit(limit)
    ).all()
    return list(rows), int(session.exec(select(func.count()).select_from(Rollout)).one())


# ---------------------------------------------------------------- commands
def get_command(*, session: Session, command_id: str) -> Command:
    command = session.get(Command, command_id)
    if command is None:
        raise NotFound(f"command {command_id!r} not found")
    return command


def open_commands_for_device(*, session: Session, device_id: str) -> list[Command]:
    stmt = (
        select(Command)
        .where(Command.device_id == device_id)
        .where(col(Command.state).not_in([CommandState.succeeded, CommandState.failed]))
        .order_by(col(Command.created_at))
    )
    return list(session.exec(stmt).all())


def list_commands(*, session: Session, device_id: str, limit: int = 100) -> list[Command]:
    stmt = (
        select(Command)
        .where(Command.device_id == device_id)
        .order_by(col(Command.created_at).desc())
        .limit(limit)
    )
    return list(session.exec(stmt).all())


# ---------------------------------------------------------------- results
def list_results(
    *,
    session: Session,
    device_id: str | None = None,
    hardware_class: str | None = None,
    model_version: str | None = None,
    round_id: str | None = None,
    command_ids: Sequence[str] | None = None,
    skip: int = 0,
    limit: int = 10_000,
) -> tuple[list[Result], int]:
    stmt = select(Result)
    if device_id:
        stmt = stmt.where(Result.device_id == device_id)
    if hardware_class:
        stmt = stmt.where(Result.hardware_class == hardware_class)
    if model_version:
        stmt = stmt.where(Result.model_version == model_version)
    if round_id:
        stmt = stmt.where(Result.round_id == round_id)
    if command_ids is not None:
        stmt = stmt.where(col(Result.command_id).in_(list(command_ids)))
    count = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    page = stmt.order_by(col(Result.created_at), col(Result.id)).offset(skip).limit(limit)
    return list(session.exec(page).all()), int(count)


def count_devices_online(*, session: Session) -> tuple[int, int]:
    """(online, all) devices, counted by the database (the gauges; no row of the fleet is loaded)."""
    is_online = (col(Device.connected).is_(True) | (Device.telemetry_state == "online")) & col(
        Device.revoked
    ).is_(False)
    online = session.exec(select(func.count()).select_from(Device).where(is_online)).one()
    total = session.exec(select(func.count()).select_from(Device)).one()
    return int(online), int(total)


def latest_result(
    *,
    session: Session,
    model_version: str,
    backend: str,
    precision: str,
    device_id: str | None = None,
    hardware_class: str | None = None,
) -> Result | None:
    stmt = select(Result).where(Result.model_version == model_version).where(Result.precision == precision)
    if backend:
        stmt = stmt.where(Result.backend == backend)
    if device_id:
        stmt = stmt.where(Result.device_id == device_id)
    if hardware_class:
        stmt = stmt.where(Result.hardware_class == hardware_class)
    stmt = stmt.where(or_(col(Result.accuracy).is_not(None), col(Result.fps).is_not(None)))
    return session.exec(stmt.order_by(col(Result.created_at).desc())).first()


# ---------------------------------------------------------------- telemetry
def list_telemetry(*, session: Session, device_id: str, limit: int = 120) -> list[TelemetryAggregate]:
    stmt = (
        select(TelemetryAggregate)
        .where(TelemetryAggregate.device_id == device_id)
        .order_by(col(TelemetryAggregate.window_start).desc())
        .limit(limit)
    )
    return list(session.exec(stmt).all())


def telemetry_since(*, session: Session, device_id: str, since: datetime) -> list[TelemetryAggregate]:
    """The device's one-minute windows from ``since`` on, oldest first (at most a day's)."""
    stmt = (
        select(TelemetryAggregate)
        .where(TelemetryAggregate.device_id == device_id)
        .where(col(TelemetryAggregate.window_start) >= since)
        .order_by(col(TelemetryAggregate.window_start))
        .limit(1440)
    )
    return list(session.exec(stmt).all())


# ---------------------------------------------------------------- jobs
def create_job(*, session: Session, job_in: JobCreate) -> Job:
    job = Job.model_validate(job_in)
    session.add(job)
    session.flush()
    return job


def get_job(*, session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found")
    return job


def list_jobs(*, session: Session, skip: int = 0, limit: int = 100) -> tuple[list[Job], int]:
    rows = session.exec(select(Job).order_by(col(Job.created_at).desc()).offset(skip).limit(limit)).all()
    return list(rows), int(session.exec(select(func.count()).select_from(Job)).one())


def load_by_ids(*, session: Session, model: type[T], ids: Sequence[str]) -> list[T]:
    """The rows of ``model`` with these primary keys, 500 per query, for code that then reads
    them one by one with ``session.get`` (answered from the identity map, no query each). The
    caller must hold the returned list meanwhile: the identity map keeps only weak references."""
    key = model.id  # type: ignore[attr-defined]
    ids = list(ids)
    rows: list[T] = []
    for start in range(0, len(ids), 500):
        rows.extend(session.exec(select(model).where(col(key).in_(ids[start : start + 500]))).all())
    return rows


def touch(obj: object) -> None:
    """Set ``updated_at`` on rows that have one."""
    if hasattr(obj, "updated_at"):
        obj.updated_at = utcnow()
