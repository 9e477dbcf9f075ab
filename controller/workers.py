"""The controller's background loops, each run in its own thread by the lifecycle.

- the rollout engine: a tick of ``services.rollouts.tick`` whenever the context is woken (a
  status, a report, an operator action) or ``rollout_tick_s`` passes; every two seconds it also
  writes the heartbeats and "running" statuses the hub collected in memory and refreshes the gauges.
- the status writer: the command statuses the streams received, written in batches
  (``run_status_writer``), each batch waking the engine.
- liveness: every two seconds, says this controller process is alive (``services.instances``:
  the devices of one gone silent go offline), apart from the engine so a long tick cannot
  make it look dead.
- the job runner: trainer jobs one at a time (``services.jobs``); what an export produced is
  imported through the in-process API, like any other artifact.

Both stop when ``stop`` is set; an exception in one tick is logged and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, col, select

from controller import crud
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import Conflict
from controller.inprocess import InProcessAPI
from controller.metrics import Metrics
from controller.models import Deployment, DeploymentState, Rollout, RolloutState, utcnow
from controller.services import fleet, instances, jobs, rollouts

log = logging.getLogger(__name__)

HEARTBEAT_FLUSH_S = 2.0
MIN_PASS_GAP_S = 0.1  # between two engine passes at least (they cost O(changed), but each commits)
FULL_PASS_S = 5.0  # every in-flight deployment looked at (timeouts, other controllers' writes)
CHANGED_MARGIN_S = 2.0


def run_rollout_engine(ctx: ControllerContext, stop: threading.Event) -> None:
    """Passes on wake-ups (a status batch, a report, an operator action) at most every
    ``MIN_PASS_GAP_S``; between two full passes (every ``FULL_PASS_S``) a pass looks only at the
    deployments changed since the previous one began, less ``CHANGED_MARGIN_S`` (writes that
    committed late, clocks of other controllers a little behind)."""
    last_flush = last_full = 0.0
    previous: datetime | None = None
    while not stop.is_set():
        ctx.wakeup.wait(ctx.settings.rollout_tick_s)
        stop.wait(MIN_PASS_GAP_S)  # a burst of reports makes one pass, not one per report
        ctx.wakeup.clear()
        if stop.is_set():
            break
        started = utcnow()
        full = previous is None or time.monotonic() - last_full >= FULL_PASS_S
        since = None if full or previous is None else previous - timedelta(seconds=CHANGED_MARGIN_S)
        try:
            with session_scope(ctx.engine) as session:
                rollouts.tick(session=session, hub=ctx.hub, since=since)
            previous = started
            if full:
                last_full = time.monotonic()
            if time.monotonic() - last_flush > HEARTBEAT_FLUSH_S:
                seen, progress = ctx.hub.drain_heartbeats(), ctx.hub.drain_progress()
                with session_scope(ctx.engine) as session:
                    if seen:
                        fleet.flush_heartbeats(session=session, seen=seen)
                    fleet.flush_progress(session=session, seen=progress)
                    update_gauges(session=session, metrics=ctx.metrics)
                last_flush = time.monotonic()
        except Exception:
            if not stop.is_set():
                log.exception("rollout engine tick failed")


STATUS_COALESCE_S = 0.05  # after the first status, how long the writer gathers others


def run_status_writer(ctx: ControllerContext, stop: threading.Event) -> None:
    """Write the command statuses the streams received (``SessionHub.note_status``) in
    batches, one transaction for all of a moment's, then wake the rollout engine. A write that
    fails puts its statuses back for the next round (a second failure drops them: the agents
    repeat final statuses at their next connect). The ones still waiting at stop are written."""
    failed_once = False
    while True:
        stopping = stop.is_set()
        if not stopping:
            ctx.hub.statuses_waiting.wait(0.5)
            stop.wait(STATUS_COALESCE_S)  # a wave's statuses in one batch, not one by one
        seen = ctx.hub.drain_statuses()
        if seen:
            try:
                with session_scope(ctx.engine) as session:
                    fleet.record_statuses(session=session, seen=seen)
                failed_once = False
            except Exception:
                log.exception("writing %d command statuses failed", len(seen))
                if not failed_once and not stopping:
                    ctx.hub.requeue_statuses(seen)
                failed_once = not failed_once
                stop.wait(0.5)
            ctx.wake()
        if stopping:
            return


def run_liveness(ctx: ControllerContext, stop: threading.Event) -> None:
    """Say every two seconds that this process is alive (``services.instances.beat``), in a
    thread of its own: a rollout tick over a large fleet can take longer than the 30 s after
    which the other controllers take this one for gone and put its devices offline."""
    while not stop.wait(HEARTBEAT_FLUSH_S):
        try:
            with session_scope(ctx.engine) as session:
                instances.beat(session=session, instance_id=ctx.hub.instance_id, holding=ctx.hub.connected())
        except Exception:
            if not stop.is_set():
                log.exception("controller liveness beat failed")


def update_gauges(*, session: Session, metrics: Metrics) -> None:
    """Devices online/offline and the deployments of active rollouts, from the DB."""
    online, total = crud.count_devices_online(session=session)
    metrics.devices.labels("online").set(online)
    metrics.devices.labels("offline").set(total - online)
    metrics.rollout_deployments.clear()
    active = session.exec(
        select(Deployment.rollout_id, Deployment.state, func.count())
        .join(Rollout, col(Rollout.id) == Deployment.rollout_id)
        .where(col(Rollout.state).in_([RolloutState.running, RolloutState.paused]))
        .group_by(col(Deployment.rollout_id), col(Deployment.state))
    ).all()  # counted by the database: no row per deployment every two seconds
    for rollout_id, state, n in active:
        metrics.rollout_deployments.labels(rollout_id, DeploymentState(state).value).set(n)


def run_job_runner(ctx: ControllerContext, stop: threading.Event) -> None:
    api = InProcessAPI(ctx)

    def import_artifact(onnx_path: str, manifest_path: str) -> str:
        try:
            return api.import_model(onnx_path, Path(manifest_path), source="trainer").version
        except Conflict as exc:
            return f"not imported: {exc.message}"

    while not stop.wait(1.0):
        try:
            while not stop.is_set() and jobs.run_next_job(ctx.engine, import_artifact):
                pass
        except Exception:
            if not stop.is_set():
                log.exception("job runner failed")
