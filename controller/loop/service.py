"""Loops started through the REST API: validated up front, run in the controller process, kept on disk.

A loop is the demo's ``run_loop`` on the controller's own fleet: ``SpecTrainer`` trains in this
process, ``ControllerFleet`` measures on the enrolled devices. Its state, progress lines and,
when done, its report live under ``<data-dir>/loops/<id>/``; a controller that stops mid-loop
marks it ``interrupted`` when it starts again (a loop is not resumed: its candidates are on
disk, and a new loop can be started).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from controller import crud
from controller.context import ControllerContext
from controller.errors import InvalidInput, NotFound
from controller.inprocess import InProcessAPI
from controller.loop.engine import LoopBudget
from controller.loop.fleet_adapter import FleetSettings, with_stream_goals
from controller.loop.goals import GoalError, parse_goals
from controller.loop.on_controller import run_on_controller
from controller.loop.planner import Ladders
from controller.loop.record import LoopRecord
from controller.loop.trainer_adapter import TrainerSettings

log = logging.getLogger(__name__)

STATES = ("running", "succeeded", "failed", "interrupted")


class LadderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prune_ratios: list[float] = Field(default_factory=lambda: [0.3, 0.5, 0.7])
    students: list[str] = Field(default_factory=lambda: ["resnet18", "mobilenet_v3_large"])
    per_round: int = Field(default=2, ge=1, le=10)

    @field_validator("prune_ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(not 0 < r < 1 for r in v):
            raise ValueError("prune ratios must be between 0 and 1 (exclusive)")
        return v


class LoopCreate(BaseModel):
    """What a loop needs; everything is checked before anything starts."""

    model_config = ConfigDict(extra="forbid")
    task: str = Field(default="classification", pattern="^(classification)$")
    spec: str = Field(description="path of the experiment's YAML spec on the controller host")
    overrides: list[str] = Field(default_factory=list, description="key.sub=value for every action")
    name: str = Field(default="model", pattern=r"^[a-z0-9][a-z0-9-]{0,40}$")
    baseline_backbone: str = "resnet50"
    train_epochs: int = Field(default=10, ge=1)
    retrain_epochs: int = Field(default=4, ge=1)
    distill_epochs: int = Field(default=8, ge=1)
    goals: dict[str, Any]
    ladders: LadderIn = Field(default_factory=LadderIn)
    max_rounds: int = Field(default=3, ge=0, le=20)
    min_rounds: int = Field(default=0, ge=0, le=20)
    max_trainer_seconds: float = Field(default=3600.0, gt=0)
    evaluation_artifact_id: str
    calibration_artifact_id: str | None = None
    bench_duration_ms: int = Field(default=2000, ge=100, le=60_000)
    # the stream scenario (goals' min_streams / stream_fps): the reference clip, a shard holding one video
    stream_clip_artifact_id: str | None = None
    stream_counts: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1, max_length=8)
    stream_step_s: float = Field(default=10.0, ge=0.2, le=600)


class LoopPublic(BaseModel):
    id: str
    state: str
    created_at: str
    updated_at: str
    error: str = ""
    progress: list[str] = Field(default_factory=list)
    request: dict[str, Any] = Field(default_factory=dict)
    classes: list[dict[str, Any]] = Field(default_factory=list)  # the choice per class, when done
    report: str = ""  # relative URL of the HTML report, when done


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class LoopRunner:
    """Starts loops in threads and answers for them from ``<data-dir>/loops``."""

    def __init__(self, ctx: ControllerContext) -> None:
        self.ctx = ctx
        self.api = InProcessAPI(ctx)
        self.root = Path(ctx.settings.data_dir) / "loops"
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._mark_interrupted()

    # -------------------------------------------------------------- state on disk
    def _status_path(self, loop_id: str) -> Path:
        return self.root / loop_id / "status.json"

    def _write(self, status: LoopPublic) -> None:
        status.updated_at = _now()
        path = self._status_path(status.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(status.model_dump_json(indent=2), encoding="utf-8")
        tmp.replace(path)

    def _mark_interrupted(self) -> None:
        for path in self.root.glob("*/status.json"):
            status = LoopPublic.model_validate_json(path.read_text(encoding="utf-8"))
            if status.state == "running":
                status.state, status.error = "interrupted", "the controller stopped while this loop ran"
                self._write(status)

    def get(self, loop_id: str) -> LoopPublic:
        path = self._status_path(loop_id)
        if not path.is_file():
            raise NotFound(f"loop {loop_id} not found")
        return LoopPublic.model_validate_json(path.read_text(encoding="utf-8"))

    def list(self) -> list[LoopPublic]:
        rows = [
            LoopPublic.model_validate_json(p.read_text(encoding="utf-8"))
            for p in self.root.glob("*/status.json")
        ]
        return sorted(rows, key=lambda s: s.created_at, reverse=True)

    def report_dir(self, loop_id: str) -> Path:
        self.get(loop_id)
        return self.root / loop_id / "report"

    # -------------------------------------------------------------- start
    def validate(self, body: LoopCreate) -> dict:
        """Goals, spec, artifacts and device classes: refused here with the key that is wrong."""
        try:
            goals = parse_goals(body.goals)
        except GoalError as exc:
            raise InvalidInput(str(exc)) from exc
        if not Path(body.spec).is_file():
            raise InvalidInput(f"spec: file not found on the controller host: {body.spec}")
        try:
            with_stream_goals(self._fleet_settings(body), goals)
        except GoalError as exc:
            raise InvalidInput(str(exc)) from exc
        if any(not 1 <= n <= 64 for n in body.stream_counts):
            raise InvalidInput(f"stream_counts: each must be 1..64, got {body.stream_counts}")
        for key in ("evaluation_artifact_id", "calibration_artifact_id", "stream_clip_artifact_id"):
            artifact_id = getattr(body, key)
            if artifact_id and not self._artifact_exists(artifact_id):
                raise NotFound(f"{key}: artifact {artifact_id} not found")
        classes = {d.hardware_class for d in self.api.list_devices(online=True)}
        missing = sorted(set(goals) - classes)
        if missing:
            raise InvalidInput(
                f"goals.classes: no online device of class(es) {missing}; online classes: {sorted(classes)}"
            )
        return goals

    @staticmethod
    def _fleet_settings(body: LoopCreate) -> FleetSettings:
        return FleetSettings(
            evaluation_artifact_id=body.evaluation_artifact_id,
            calibration_artifact_id=body.calibration_artifact_id,
            duration_ms=body.bench_duration_ms,
            stream_clip_artifact_id=body.stream_clip_artifact_id,
            stream_counts=tuple(body.stream_counts),
            stream_step_s=body.stream_step_s,
        )

    def _artifact_exists(self, artifact_id: str) -> bool:
        try:
            with self.api.session() as session:
                crud.get_artifact(session=session, artifact_id=artifact_id)
            return True
        except NotFound:
            return False

    def start(self, body: LoopCreate) -> LoopPublic:
        goals = self.validate(body)
        loop_id = uuid.uuid4().hex
        status = LoopPublic(
            id=loop_id, state="running", created_at=_now(), updated_at=_now(), request=body.model_dump()
        )
        self._write(status)
        thread = threading.Thread(
            target=self._run, args=(status, body, goals), name=f"loop-{loop_id[:8]}", daemon=True
        )
        thread.start()
        return status

    def _run(self, status: LoopPublic, body: LoopCreate, goals: dict) -> None:
        work = self.root / status.id
        t0 = time.monotonic()

        def progress(msg: str) -> None:
            with self._lock:
                status.progress.append(f"[{time.monotonic() - t0:6.0f}s] {msg}")
                self._write(status)

        try:
            record = LoopRecord(
                task=body.task,
                metric_name="top-1 accuracy (%) on the evaluation shard, measured on the device",
                emulation_note="Devices of this controller's fleet, as enrolled (hardware classes as they report them).",
                rounds=0,
            )
            ladders = body.ladders
            run_on_controller(
                self.ctx,
                TrainerSettings(
                    task=body.task,
                    spec=Path(body.spec),
                    work_dir=work / "models",
                    name=body.name,
                    baseline_backbone=body.baseline_backbone,
                    train_epochs=body.train_epochs,
                    retrain_epochs=body.retrain_epochs,
                    distill_epochs=body.distill_epochs,
                    overrides=body.overrides,
                ),
                self._fleet_settings(body),
                goals,
                Ladders(
                    prune_ratios=ladders.prune_ratios, students=ladders.students, per_round=ladders.per_round
                ),
                LoopBudget(
                    max_rounds=body.max_rounds,
                    min_rounds=body.min_rounds,
                    max_trainer_seconds=body.max_trainer_seconds,
                ),
                record,
                work / "report",
                round_id=f"loop-{status.id}",
                progress=progress,
            )
            with self._lock:
                status.classes = [json.loads(json.dumps(c.__dict__)) for c in record.classes]
                status.report = f"/api/v1/loops/{status.id}/report"
                status.state = "succeeded"
                self._write(status)
        except Exception as exc:  # the loop's thread: record why, never take the controller down
            log.exception("loop %s failed", status.id)
            with self._lock:
                status.state, status.error = "failed", f"{type(exc).__name__}: {exc}"
                self._write(status)
