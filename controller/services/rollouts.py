"""The rollout engine: which devices get a model version, in which order, and when to stop.

A rollout fixes its targets when it is created (selector: tags, hardware classes, explicit
devices) and splits them into a canary wave (``canary_share`` of the targets, wave 0) and
``waves`` further waves. A wave's devices get a deploy command; each deployment then passes a
**gate** on what the device itself measured for the new version (accuracy on the evaluation
shard and throughput) against the version it replaces, measured the same way on the same
device (or, when that device never measured it, on its hardware class).

Gate first (``Strategy.mode``, the default): the deploy loads the candidate into the device's
inactive slot and measures it there while the old model keeps serving; only when the gate passes
does a switch command make it active. A failing candidate never answers a live request, and
nothing needs rolling back. ``activate_then_watch`` keeps the older way: the deploy activates
the candidate, the gate judges what it measured while serving, and it must then stay healthy
(control stream up, still the active version) for ``health_window_s``; a failure rolls the
device back.

When every deployment of a wave is decided, a failure share above
``max_failure_share`` aborts the rollout (and rolls back what it deployed, by default);
otherwise the next wave starts.

All state is in the DB (``Rollout``, ``Deployment``, ``Command``, ``Result``); ``tick`` only
reads it and moves it forward, so a controller restarted mid-rollout carries on where it stopped.
"""

from __future__ import annotations

import logging
import math
from datetime import datetime, timedelta, timezone

from sqlalchemy import func, or_
from sqlmodel import Session, col, select

from controller import crud
from controller.db import xact_lock
from controller.errors import Conflict, InvalidInput
from controller.models import (
    ArtifactKind,
    Command,
    CommandKind,
    CommandState,
    Deployment,
    DeploymentState,
    Device,
    Result,
    Rollout,
    RolloutCreate,
    RolloutState,
    Strategy,
    utcnow,
)
from controller.services.artifacts import artifact_ref
from controller.services.commands import create_command
from controller.services.fleet import primary_accuracy
from controller.services.hub import SessionHub
from protos import fleet_pb2

log = logging.getLogger(__name__)
FAILED = (DeploymentState.failed, DeploymentState.rolling_back, DeploymentState.rolled_back)
GATE_FIRST, WATCH = "gate_first", "activate_then_watch"
WATCHING = "watching health"  # message of a deployment in its health window (activate_then_watch)


def _aware(ts: datetime) -> datetime:
    return ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)


# ---------------------------------------------------------------- planning
def select_devices(*, session: Session, selector: dict) -> list[Device]:
    tags = set(selector.get("tags") or [])
    classes = set(selector.get("hardware_classes") or [])
    explicit = list(selector.get("device_ids") or [])
    if explicit:
        devices = []
        for device_id in explicit:
            device = session.get(Device, device_id)
            if device is None:
                raise InvalidInput(f"selector names unknown device {device_id!r}")
            devices.append(device)
    else:
        devices = list(session.exec(select(Device).where(col(Device.revoked).is_(False))).all())
    out = [
        d
        for d in devices
        if not d.revoked and tags <= set(d.tags or []) and (not classes or d.hardware_class in classes)
    ]
    return sorted(out, key=lambda d: d.id)


def plan_waves(n: int, strategy: Strategy) -> list[int]:
    """Wave number per target (targets in a fixed order); wave 0 is the canary when there is one."""
    if n == 0:
        return []
    canary = math.ceil(strategy.canary_share * n - 1e-9) if strategy.canary_share > 0 else 0
    canary = min(canary, n)
    rest = n - canary
    first = 1 if canary else 0
    waves = [0] * canary
    per_wave = math.ceil(rest / strategy.waves) if rest else 0
    for i in range(rest):
        waves.append(first + i // per_wave)
    return waves


def create_rollout(*, session: Session, rollout_in: RolloutCreate) -> Rollout:
    """Validate, fix the targets and their waves; the engine's next tick starts wave 0. Two
    creations never run at once (on any controller): a device joins one active rollout only."""
    xact_lock(session, "edgeloop.create_rollout")
    mv = crud.get_model_version(session=session, version=rollout_in.model_version)
    for field in ("evaluation_artifact_id", "calibration_artifact_id"):
        artifact_id = getattr(rollout_in, field)
        if artifact_id:
            artifact = crud.get_artifact(session=session, artifact_id=artifact_id)
            if artifact.kind != ArtifactKind.shard:
                raise InvalidInput(
                    f"{field} must name a shard artifact, {artifact_id} is a {artifact.kind.value}"
                )
    targets = select_devices(session=session, selector=rollout_in.selector.model_dump())
    if not targets:
        raise InvalidInput("the selector matches no enrolled, non-revoked device")
    busy = session.exec(
        select(Deployment.device_id)
        .join(Rollout, col(Rollout.id) == Deployment.rollout_id)
        .where(col(Rollout.state).in_([RolloutState.pending, RolloutState.running, RolloutState.paused]))
        .where(col(Deployment.device_id).in_([d.id for d in targets]))
    ).all()
    if busy:
        raise Conflict(f"devices already in an active rollout: {sorted(set(busy))[:10]}")
    rollout = Rollout(
        model_version=mv.version,
        backend=rollout_in.backend,
        precision=rollout_in.precision,
        selector=rollout_in.selector.model_dump(),
        strategy=rollout_in.strategy.model_dump(),
        evaluation_artifact_id=rollout_in.evaluation_artifact_id,
        calibration_artifact_id=rollout_in.calibration_artifact_id,
        state=RolloutState.running,
        wave_started_at=utcnow(),
    )
    session.add(rollout)
    session.flush()
    for device, wave in zip(targets, plan_waves(len(targets), rollout_in.strategy), strict=True):
        session.add(Deployment(rollout_id=rollout.id, device_id=device.id, wave=wave))
    session.flush()
    return rollout


# ---------------------------------------------------------------- operator actions
def pause_rollout(*, session: Session, rollout_id: str) -> Rollout:
    rollout = crud.get_rollout(session=session, rollout_id=rollout_id, lock=True)
    if rollout.state != RolloutState.running:
        raise Conflict(f"rollout is {rollout.state.value}, only a running rollout can be paused")
    rollout.state = RolloutState.paused
    crud.touch(rollout)
    session.add(rollout)
    return rollout


def resume_rollout(*, session: Session, rollout_id: str) -> Rollout:
    rollout = crud.get_rollout(session=session, rollout_id=rollout_id, lock=True)
    if rollout.state != RolloutState.paused:
        raise Conflict(f"rollout is {rollout.state.value}, only a paused rollout can be resumed")
    rollout.state = RolloutState.running
    crud.touch(rollout)
    session.add(rollout)
    return rollout


def abort_rollout(
    *,
    session: Session,
    hub: SessionHub,
    rollout_id: str,
    reason: str = "aborted by operator",
    rollback: bool = False,
) -> Rollout:
    rollout = crud.get_rollout(session=session, rollout_id=rollout_id, lock=True)
    if rollout.state.terminal:
        raise Conflict(f"rollout is already {rollout.state.value}")
    _stop(
        session=session,
        hub=hub,
        rollout=rollout,
        state=RolloutState.aborted,
        reason=reason,
        rollback=rollback,
    )
    return rollout


def rollback_rollout(
    *, session: Session, hub: SessionHub, rollout_id: str, reason: str = "rolled back by operator"
) -> Rollout:
    rollout = crud.get_rollout(session=session, rollout_id=rollout_id, lock=True)
    if rollout.state == RolloutState.rolled_back:
        raise Conflict("rollout is already rolled back")
    _stop(
        session=session,
        hub=hub,
        rollout=rollout,
        state=RolloutState.rolled_back,
        reason=reason,
        rollback=True,
    )
    return rollout


def _stop(
    *, session: Session, hub: SessionHub, rollout: Rollout, state: RolloutState, reason: str, rollback: bool
) -> None:
    rollout.state = state
    rollout.reason = reason
    crud.touch(rollout)
    session.add(rollout)
    gate_first = Strategy.model_validate(rollout.strategy).mode == GATE_FIRST
    for d in crud.list_deployments(session=session, rollout_id=rollout.id):
        if d.state == DeploymentState.pending:
            _set(d, DeploymentState.skipped, f"not deployed: {reason}")
        elif rollback and d.state in (DeploymentState.deploying, DeploymentState.gating):
            if gate_first and not _switch_sent(session, d):  # the candidate never served
                _set(d, DeploymentState.failed, f"stopped before the switch: {reason}")
            else:
                _send_rollback(session=session, hub=hub, rollout=rollout, d=d, why=reason)
        elif rollback and d.state == DeploymentState.succeeded:
            _send_rollback(session=session, hub=hub, rollout=rollout, d=d, why=reason)
        session.add(d)
    session.flush()


# ---------------------------------------------------------------- the engine
def _switch_sent(session: Session, d: Deployment) -> bool:
    command = session.get(Command, d.command_id) if d.command_id else None
    return command is not None and command.kind == CommandKind.switch


def _send_switch(*, session: Session, hub: SessionHub, rollout: Rollout, d: Deployment, why: str) -> None:
    """The gate passed on the inactive slot: make the candidate active."""
    command = create_command(
        session=session,
        hub=hub,
        device_id=d.device_id,
        kind=CommandKind.switch,
        body=fleet_pb2.Switch(model_version=rollout.model_version, rollout_id=rollout.id),
        model_version=rollout.model_version,
        rollout_id=rollout.id,
    )
    d.command_id = command.id
    _set(d, DeploymentState.gating, f"{why}; switching")


def _set(d: Deployment, state: DeploymentState, message: str = "") -> None:
    d.state = state
    if message:
        d.message = message
    d.updated_at = utcnow()


def _send_rollback(*, session: Session, hub: SessionHub, rollout: Rollout, d: Deployment, why: str) -> None:
    command = create_command(
        session=session,
        hub=hub,
        device_id=d.device_id,
        kind=CommandKind.rollback,
        body=fleet_pb2.Rollback(reason=why, to_version=d.previous_version, rollout_id=rollout.id),
        model_version=d.previous_version,
        rollout_id=rollout.id,
    )
    d.command_id = command.id
    _set(d, DeploymentState.rolling_back, d.message or why)


def _deploy_body(*, session: Session, rollout: Rollout, strategy: Strategy) -> fleet_pb2.Deploy:
    """The deploy every device of the rollout gets (nothing in it is per device): made once per
    engine pass, not once per device."""
    mv = crud.get_model_version(session=session, version=rollout.model_version)
    body = fleet_pb2.Deploy(
        artifact=artifact_ref(crud.get_artifact(session=session, artifact_id=mv.artifact_id), mv.version),
        backend=rollout.backend,
        precision=rollout.precision,
        activate=strategy.mode == WATCH,  # gate first: into the inactive slot, switched in on a pass
        rollout_id=rollout.id,
    )
    if strategy.preferred_batch_sizes or strategy.max_queue_delay_us:
        body.batching.preferred_batch_sizes.extend(strategy.preferred_batch_sizes)
        body.batching.max_queue_delay_us = strategy.max_queue_delay_us
    if rollout.evaluation_artifact_id:
        body.evaluation.CopyFrom(
            artifact_ref(crud.get_artifact(session=session, artifact_id=rollout.evaluation_artifact_id))
        )
    if rollout.calibration_artifact_id:
        body.calibration.CopyFrom(
            artifact_ref(crud.get_artifact(session=session, artifact_id=rollout.calibration_artifact_id))
        )
    return body


def _start_deployment(
    *, session: Session, hub: SessionHub, rollout: Rollout, d: Deployment, strategy: Strategy,
    body: fleet_pb2.Deploy,
) -> None:  # fmt: skip
    device = session.get(Device, d.device_id)  # loaded with its wave (``_start_wave``): no query
    if device is None or device.revoked:
        _set(d, DeploymentState.failed, "device revoked or gone")
        return
    d.previous_version = device.active_version
    if device.active_version == rollout.model_version:
        _set(d, DeploymentState.succeeded, "already running this version")
        return
    baseline = None
    if device.active_version:
        baseline = crud.latest_result(
            session=session,
            model_version=device.active_version,
            backend=rollout.backend,
            precision=rollout.precision,
            device_id=device.id,
        ) or crud.latest_result(
            session=session,
            model_version=device.active_version,
            backend=rollout.backend,
            precision=rollout.precision,
            hardware_class=device.hardware_class,
        )
    if baseline is not None:
        d.baseline_accuracy = primary_accuracy(baseline.metrics, strategy.accuracy_metric)
        d.baseline_fps = baseline.fps
    command = create_command(
        session=session,
        hub=hub,
        device_id=d.device_id,
        kind=CommandKind.deploy,
        body=body,
        model_version=rollout.model_version,
        rollout_id=rollout.id,
        flush=False,  # the wave's commands go in with one flush at the end of the pass
    )
    d.command_id = command.id
    _set(
        d,
        DeploymentState.deploying,
        "deploy sent" if device.connected or hub.is_connected(d.device_id) else "waiting for the device",
    )


def _start_wave(
    *, session: Session, hub: SessionHub, rollout: Rollout, pending: list[Deployment], strategy: Strategy
) -> None:
    """Deploy commands for the pending deployments of a wave: their devices read in batches of
    500 and the deploy body made once, not a query and a body per device."""
    body = _deploy_body(session=session, rollout=rollout, strategy=strategy)
    held = crud.load_by_ids(session=session, model=Device, ids=[d.device_id for d in pending])  # noqa: F841
    for d in pending:
        _start_deployment(session=session, hub=hub, rollout=rollout, d=d, strategy=strategy, body=body)
        session.add(d)


def gate(d: Deployment, result: Result, strategy: Strategy) -> tuple[bool, str]:
    """The measured new version against the measured old one. Returns (passed, reason)."""
    accuracy = primary_accuracy(result.metrics, strategy.accuracy_metric)
    d.accuracy, d.fps = accuracy, result.fps
    if result.errors:
        return False, f"device reported errors: {'; '.join(result.errors)[:300]}"
    misses = []
    if strategy.max_accuracy_drop is not None:
        if accuracy is None:
            misses.append("no accuracy measured (rollout needs an evaluation shard)")
        elif d.baseline_accuracy is not None and accuracy < d.baseline_accuracy - strategy.max_accuracy_drop:
            misses.append(
                f"accuracy {accuracy:.2f} < {d.baseline_accuracy:.2f} (was) - {strategy.max_accuracy_drop:g} allowed drop"
            )
    if strategy.min_fps_ratio is not None:
        if not result.fps:
            misses.append("no throughput measured")
        elif d.baseline_fps and result.fps < strategy.min_fps_ratio * d.baseline_fps:
            misses.append(f"fps {result.fps:.1f} < {strategy.min_fps_ratio:g} x {d.baseline_fps:.1f} (was)")
    if misses:
        return False, "gate failed: " + "; ".join(misses)
    note = "" if d.baseline_accuracy is not None or not d.previous_version else " (no baseline measured)"
    acc = f"{accuracy:.2f}" if accuracy is not None else "n/a"
    fps = f"{result.fps:.1f}" if result.fps else "n/a"
    return True, f"gate passed: accuracy {acc}, fps {fps}{note}"


def _observe(
    *,
    session: Session,
    hub: SessionHub,
    rollout: Rollout,
    d: Deployment,
    now: datetime,
    commands: dict[str, Command],
    results: dict[str, Result],
    strategy: Strategy,
) -> None:
    """Move one in-flight deployment forward from its command's state and its report."""
    command = commands.get(d.command_id) if d.command_id else None
    if d.state == DeploymentState.rolling_back:
        if command is not None and command.state.terminal:
            if command.state == CommandState.succeeded:
                _set(d, DeploymentState.rolled_back)
            else:
                _set(d, DeploymentState.failed, f"{d.message}; rollback failed: {command.message}")
            session.add(d)
        return
    if command is None:
        return
    if command.kind == CommandKind.switch:  # gate first: the gate passed, the switch is out
        if command.state == CommandState.succeeded:
            _set(d, DeploymentState.succeeded, d.message.removesuffix("; switching"))
        elif command.state == CommandState.failed:
            _set(d, DeploymentState.failed, f"{d.message}; switch failed: {command.message}")
        elif (now - _aware(d.updated_at)).total_seconds() > strategy.deploy_timeout_s:
            _set(d, DeploymentState.failed, f"{d.message}; the switch timed out ({command.state.value})")
        session.add(d)
        return
    if command.state == CommandState.failed:
        kept = "; the old model kept serving" if strategy.mode == GATE_FIRST else ""
        _set(d, DeploymentState.failed, f"deploy failed: {command.message}{kept}")
        session.add(d)
        return
    result = results.get(command.id)
    if command.state == CommandState.succeeded and result is not None:
        passed, reason = gate(d, result, strategy)
        if not passed and strategy.mode == GATE_FIRST:
            _set(d, DeploymentState.failed, f"{reason}; never switched in, the old model kept serving")
        elif not passed:
            d.message = reason
            _send_rollback(session=session, hub=hub, rollout=rollout, d=d, why=reason)
        elif strategy.mode == GATE_FIRST:
            _send_switch(session=session, hub=hub, rollout=rollout, d=d, why=reason)
        else:
            _watch(session=session, hub=hub, rollout=rollout, d=d, now=now, reason=reason, strategy=strategy)
        session.add(d)
        return
    if command.state == CommandState.succeeded and d.state == DeploymentState.deploying:
        _set(d, DeploymentState.gating, "deployed; waiting for the measured report")
        session.add(d)
    if (now - _aware(d.updated_at)).total_seconds() > strategy.deploy_timeout_s and d.state in (
        DeploymentState.deploying,
        DeploymentState.gating,
    ):
        why = (
            f"timed out after {strategy.deploy_timeout_s:g}s ({d.state.value}, command {command.state.value})"
        )
        if command.state == CommandState.succeeded:
            d.message = why
            _send_rollback(session=session, hub=hub, rollout=rollout, d=d, why=why)
        else:
            _set(d, DeploymentState.failed, why)
        session.add(d)


def _watch(
    *, session: Session, hub: SessionHub, rollout: Rollout, d: Deployment, now: datetime, reason: str,
    strategy: Strategy,
) -> None:  # fmt: skip
    """activate_then_watch: the gate passed on the serving candidate; it must stay healthy for the
    health window (control stream up, still the active version) before it counts as succeeded."""
    if strategy.health_window_s <= 0:
        _set(d, DeploymentState.succeeded, reason)
        return
    if not d.message.startswith(WATCHING):
        _set(d, DeploymentState.gating, f"{WATCHING} for {strategy.health_window_s:g}s; {reason}")
        return
    device = session.get(Device, d.device_id)
    unhealthy = ""
    # device.connected, not this process's hub: with several controllers the device's stream
    # may be held by another process, which records it in the database
    if device is None or not (device.connected or hub.is_connected(d.device_id)):
        unhealthy = "the device went offline"
    elif device.active_version and device.active_version != rollout.model_version:
        unhealthy = f"the device no longer runs it (active: {device.active_version})"
    if unhealthy:
        why = f"health window failed: {unhealthy}"
        d.message = why
        _send_rollback(session=session, hub=hub, rollout=rollout, d=d, why=why)
    elif (now - _aware(d.updated_at)).total_seconds() >= strategy.health_window_s:
        _set(
            d,
            DeploymentState.succeeded,
            d.message.split("; ", 1)[-1] + f"; healthy for {strategy.health_window_s:g}s",
        )


INFLIGHT = (DeploymentState.deploying, DeploymentState.gating, DeploymentState.rolling_back)
# a wave is decided when none of its deployments is still in one of these
UNDECIDED = (DeploymentState.pending, DeploymentState.deploying, DeploymentState.gating)


def _inflight(session: Session, rollout_id: str) -> list[Deployment]:
    """The deployments waiting on a device (index ``ix_deployment_rollout_state``): a pass reads
    these, never the rollout's settled or pending ones."""
    return list(
        session.exec(
            select(Deployment)
            .where(Deployment.rollout_id == rollout_id)
            .where(col(Deployment.state).in_(INFLIGHT))
            .order_by(col(Deployment.wave), col(Deployment.device_id))
        ).all()
    )


def _inflight_changed(
    session: Session, rollout_id: str, *, since: datetime, now: datetime, timeout_s: float
) -> list[Deployment]:
    """The in-flight deployments that may move: their command or the deployment itself changed,
    or a report for their command came, at ``since`` or later, or they waited longer than the
    deploy timeout. The database picks them among the in-flight ones (an index on the rollout
    and state, the command by its key): a pass builds rows for what changed, not for every
    device of a wave."""
    report_since = (
        select(Result.id)
        .where(Result.command_id == Deployment.command_id)
        .where(col(Result.created_at) >= since)
        .exists()
    )
    return list(
        session.exec(
            select(Deployment)
            .outerjoin(Command, col(Command.id) == Deployment.command_id)
            .where(Deployment.rollout_id == rollout_id)
            .where(col(Deployment.state).in_(INFLIGHT))
            .where(
                or_(
                    col(Command.updated_at) >= since,
                    col(Deployment.updated_at) >= since,
                    col(Deployment.updated_at) < now - timedelta(seconds=timeout_s),
                    report_since,
                )
            )
            .order_by(col(Deployment.wave), col(Deployment.device_id))
        ).all()
    )


def _wave_counts(session: Session, rollout_id: str, wave: int) -> dict[DeploymentState, int]:
    rows = session.exec(
        select(Deployment.state, func.count())
        .where(Deployment.rollout_id == rollout_id)
        .where(Deployment.wave == wave)
        .group_by(col(Deployment.state))
    ).all()
    return {DeploymentState(state): int(n) for state, n in rows}


def _advance(
    *, session: Session, hub: SessionHub, rollout: Rollout, now: datetime, since: datetime | None = None
) -> None:
    """One step of one rollout. It reads the in-flight deployments (and their commands and
    reports), the pending ones of the current wave only when that wave starts, and per-state
    counts of the current wave: never the whole rollout. With ``since``, only the in-flight
    deployments that changed from then on (``_inflight_changed``); a health window
    (activate_then_watch) is judged on time and device state, so those rollouts read all their
    in-flight deployments every pass."""
    strategy = Strategy.model_validate(rollout.strategy)
    if since is None or strategy.mode == WATCH:
        inflight = _inflight(session, rollout.id)
    else:
        inflight = _inflight_changed(
            session, rollout.id, since=since, now=now, timeout_s=strategy.deploy_timeout_s
        )
    ids = [d.command_id for d in inflight if d.command_id]
    commands: dict[str, Command] = {}
    results: dict[str, Result] = {}
    for start in range(0, len(ids), 500):  # two queries per 500 devices, not two per device
        batch = ids[start : start + 500]
        commands.update(
            (c.id, c) for c in session.exec(select(Command).where(col(Command.id).in_(batch))).all()
        )
        for r in session.exec(select(Result).where(col(Result.command_id).in_(batch))).all():
            results.setdefault(r.command_id, r)
    for d in inflight:
        _observe(session=session, hub=hub, rollout=rollout, d=d, now=now, commands=commands, results=results,
                 strategy=strategy)  # fmt: skip
    if rollout.state != RolloutState.running:
        return
    last_wave = session.exec(
        select(func.max(Deployment.wave)).where(Deployment.rollout_id == rollout.id)
    ).one()
    while True:
        pending = list(
            session.exec(
                select(Deployment)
                .where(Deployment.rollout_id == rollout.id)
                .where(Deployment.state == DeploymentState.pending)
                .where(Deployment.wave == rollout.current_wave)
                .order_by(col(Deployment.device_id))
            ).all()
        )
        if pending:
            _start_wave(session=session, hub=hub, rollout=rollout, pending=pending, strategy=strategy)
        session.flush()
        counts = _wave_counts(session, rollout.id, rollout.current_wave)
        if any(counts.get(state) for state in UNDECIDED):
            return
        size = sum(counts.values())
        failed = sum(counts.get(state, 0) for state in FAILED)
        share = failed / size if size else 0.0
        name = (
            "canary"
            if rollout.current_wave == 0 and strategy.canary_share > 0
            else f"wave {rollout.current_wave}"
        )
        if share > strategy.max_failure_share:
            first = session.exec(
                select(Deployment.message)
                .where(Deployment.rollout_id == rollout.id)
                .where(Deployment.wave == rollout.current_wave)
                .where(col(Deployment.state).in_(FAILED))
                .order_by(col(Deployment.device_id))
                .limit(1)
            ).first()
            reason = (
                f"{name}: {failed}/{size} failed ({share:.0%} > max {strategy.max_failure_share:.0%}): "
                + (first or "")
            )
            log.warning("rollout %s aborted: %s", rollout.id, reason)
            _stop(
                session=session,
                hub=hub,
                rollout=rollout,
                state=RolloutState.aborted,
                reason=reason,
                rollback=strategy.rollback_on_abort,
            )
            return
        if last_wave is None or rollout.current_wave >= last_wave:
            rollout.state = RolloutState.succeeded
            done, total = session.exec(
                select(
                    func.count().filter(col(Deployment.state) == DeploymentState.succeeded), func.count()
                ).where(Deployment.rollout_id == rollout.id)
            ).one()
            rollout.reason = f"{done}/{total} devices run {rollout.model_version}"
            crud.touch(rollout)
            session.add(rollout)
            log.info("rollout %s succeeded", rollout.id)
            return
        rollout.current_wave += 1
        rollout.wave_started_at = now
        crud.touch(rollout)
        session.add(rollout)


def claim_rollouts(*, session: Session) -> list[Rollout]:
    """The rollouts with work left (running, paused, or a rollback still unwinding) that this
    transaction takes. On PostgreSQL each row comes locked (``FOR UPDATE SKIP LOCKED``) until the
    transaction ends: a rollout another controller is moving right now is skipped, not moved
    twice, and the lock dies with a killed process's connection (its uncommitted step with it).
    SQLite ignores the clause (one controller process per SQLite database)."""
    unwinding = select(Deployment.rollout_id).where(Deployment.state == DeploymentState.rolling_back)
    return list(
        session.exec(
            select(Rollout)
            .where(
                or_(
                    col(Rollout.state).in_([RolloutState.running, RolloutState.paused]),
                    col(Rollout.id).in_(unwinding),
                )
            )
            .order_by(col(Rollout.created_at))
            .with_for_update(skip_locked=True)
        ).all()
    )


def tick(*, session: Session, hub: SessionHub, since: datetime | None = None) -> int:
    """One pass over every rollout that still has work and that no other controller is moving
    right now (``claim_rollouts``). Everything a step does (deployment states, the commands it
    creates) commits in the caller's one transaction, and commands go on the wire only after
    that commit: a step is recorded whole or not at all. Returns how many it looked at.

    ``since``: look only at in-flight deployments changed from then on (the engine passes the
    start of its previous pass less a margin, and every few seconds None: a full pass, which
    also sees what another controller wrote with a clock behind this one's)."""
    now = utcnow()
    active = claim_rollouts(session=session)
    for rollout in active:
        _advance(session=session, hub=hub, rollout=rollout, now=now, since=since)
    session.flush()
    return len(active)
