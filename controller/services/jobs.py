"""Trainer jobs: queued through the API, run one at a time by the controller.

The only trainer code the controller touches is ``trainer.jobs.run_action(task, action, spec,
overrides)``: the controller reaches the trainer through its job entry points in
``trainer/jobs.py`` only, never its modules, so the trainer's layout can change behind them.
It is imported when a job runs, so a controller installed without the trainer extra still
serves everything else and fails jobs with the reason.
"""

from __future__ import annotations

import importlib
import logging
import traceback
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller.db import session_scope
from controller.models import Job, JobState, utcnow

log = logging.getLogger(__name__)


def next_queued(*, session: Session) -> Job | None:
    return session.exec(select(Job).where(Job.state == JobState.queued).order_by(col(Job.created_at))).first()


def run_next_job(engine: Engine, on_artifact: Callable[[str, str], str] | None = None) -> bool:
    """Run the oldest queued job to its end. Returns False when none was queued.

    ``on_artifact(onnx_path, manifest_path) -> model version`` registers what an export produced."""
    with session_scope(engine) as session:
        job = next_queued(session=session)
        if job is None:
            return False
        job.state, job.started_at = JobState.running, utcnow()
        session.add(job)
        job_id, task, action = job.id, job.task, job.action
        spec, overrides, import_artifact = job.spec, list(job.overrides), job.import_artifact
    state, error = JobState.failed, ""
    result: dict[str, Any] = {}
    try:
        jobs = importlib.import_module("trainer.jobs")
        out = jobs.run_action(task, action, spec, overrides)
        result = out.to_dict() if hasattr(out, "to_dict") else {"result": repr(out)}
        state = JobState.succeeded
        if import_artifact and result.get("onnx_path") and result.get("manifest_path") and on_artifact:
            result["model_version"] = on_artifact(result["onnx_path"], result["manifest_path"])
    except ImportError as exc:
        error = f"the trainer is not installed with this controller (import trainer.jobs failed: {exc})"
    except Exception as exc:  # the job's own failure, kept with its traceback tail
        error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=5)}"
        log.warning("job %s (%s) failed: %s", job_id, action, exc)
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.state, job.result, job.error, job.finished_at = state, result, error[:8000], utcnow()
            session.add(job)
    return True


def recover_interrupted(*, session: Session) -> int:
    """Jobs left running by a controller that stopped: marked failed with the reason."""
    rows = session.exec(select(Job).where(Job.state == JobState.running)).all()
    for job in rows:
        job.state, job.error, job.finished_at = (
            JobState.failed,
            "controller stopped while the job ran",
            utcnow(),
        )
        session.add(job)
    return len(rows)
