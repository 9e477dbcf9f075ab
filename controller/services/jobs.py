"""Trainer jobs: queued through the API, run one at a time by the controller.

The only trainer code the controller touches is ``trainer.jobs.run_action(task, action, spec,
overrides)``: the controller reaches the trainer through its job entry points in
``trainer/jobs.py`` only, never its modules, so the trainer's layout can change behind them.
It runs in a child process (``controller.job_child``, started with ``controller.children.spawn``
so it ends with the controller), never inside the controller: what a spec makes the trainer load
cannot reach the controller's memory or keys, and a crash takes down only the job. A controller
installed without the trainer extra still serves everything else and fails jobs with the reason.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from controller import children
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
        result = run_in_child(task, action, spec, overrides)
        state = JobState.succeeded
        if import_artifact and result.get("onnx_path") and result.get("manifest_path") and on_artifact:
            result["model_version"] = on_artifact(result["onnx_path"], result["manifest_path"])
    except JobFailed as exc:
        error = str(exc)
        log.warning("job %s (%s) failed: %s", job_id, action, error.splitlines()[0] if error else "")
    with session_scope(engine) as session:
        job = session.get(Job, job_id)
        if job is not None:
            job.state, job.result, job.error, job.finished_at = state, result, error[:8000], utcnow()
            session.add(job)
    return True


class JobFailed(Exception):
    """The job's child process reported an error or died; the message says which."""


def run_in_child(task: str, action: str, spec: dict | str, overrides: list[str]) -> dict[str, Any]:
    """Run one trainer action in ``controller.job_child``; returns its result or raises ``JobFailed``."""
    with tempfile.TemporaryDirectory(prefix="edgeloop-job-") as tmp:
        request, answer, output = (
            Path(tmp) / "request.json",
            Path(tmp) / "result.json",
            Path(tmp) / "output.log",
        )
        request.write_text(json.dumps({"task": task, "action": action, "spec": spec, "overrides": overrides}))
        with open(output, "wb") as out:
            proc = children.spawn([sys.executable, "-m", "controller.job_child", str(request), str(answer)],
                                  stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
            code = proc.wait()
        reply = json.loads(answer.read_text(encoding="utf-8")) if answer.exists() else {}
        if code == 0 and "result" in reply:
            return reply["result"]
        if reply.get("error"):
            raise JobFailed(reply["error"])
        tail = output.read_text(encoding="utf-8", errors="replace")[-2000:]
        raise JobFailed(f"the job process ended with exit code {code} and no result:\n{tail}")


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
