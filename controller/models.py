"""Database tables and API schemas, one family per entity (template shape).

``XBase`` holds the shared fields, ``XCreate``/``XUpdate`` are what clients send, ``X`` is the
table (never returned by the API) and ``XPublic``/``XsPublic`` are what the API returns.
Lists and maps are JSON columns so the same code runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timezone
from enum import Enum
from typing import Any, Literal

from pydantic import field_validator, model_validator
from sqlalchemy import JSON, BigInteger, Index, UniqueConstraint
from sqlalchemy import DateTime as _SADateTime
from sqlalchemy.types import TypeDecorator
from sqlmodel import Field, SQLModel
from sqlmodel.main import SQLModelConfig


class DateTime(TypeDecorator):
    """Timezone-aware UTC on every backend (SQLite returns naive values; they are UTC here).
    Stored as ``DateTime(timezone=True)``, which is what the migrations create."""

    impl = _SADateTime(timezone=True)
    cache_ok = True

    def __init__(self, timezone: bool = True) -> None:  # noqa: ARG002 - same call shape as sa.DateTime
        super().__init__()

    def process_bind_param(self, value, dialect):  # noqa: ANN001, ANN201
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value

    def process_result_value(self, value, dialect):  # noqa: ANN001, ANN201
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


def _ts_field(**kw: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=DateTime(timezone=True), **kw)


# ---------------------------------------------------------------- enums
class ArtifactKind(str, Enum):
    model = "model"
    shard = "shard"


class CommandKind(str, Enum):
    deploy = "deploy"
    calibrate = "calibrate"
    benchmark = "benchmark"
    switch = "switch"
    rollback = "rollback"
    pipeline = "pipeline"  # the device's video pipelines (docs/stream.md)


class CommandState(str, Enum):
    pending = "pending"  # stored, not yet on the wire (device offline)
    sent = "sent"
    accepted = "accepted"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"

    @property
    def terminal(self) -> bool:
        return self in (CommandState.succeeded, CommandState.failed)


class RolloutState(str, Enum):
    pending = "pending"
    running = "running"
    paused = "paused"
    succeeded = "succeeded"
    aborted = "aborted"
    rolled_back = "rolled_back"

    @property
    def terminal(self) -> bool:
        return self in (RolloutState.succeeded, RolloutState.aborted, RolloutState.rolled_back)


class DeploymentState(str, Enum):
    pending = "pending"  # waits for its wave
    deploying = "deploying"  # deploy command out
    gating = "gating"  # deployed; waiting for the measured report
    succeeded = "succeeded"
    failed = "failed"
    rolling_back = "rolling_back"
    rolled_back = "rolled_back"
    skipped = "skipped"  # rollout stopped before this device's wave

    @property
    def terminal(self) -> bool:
        return self in (
            DeploymentState.succeeded,
            DeploymentState.failed,
            DeploymentState.rolled_back,
            DeploymentState.skipped,
        )


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"


# ---------------------------------------------------------------- devices
class DeviceBase(SQLModel):
    name: str = Field(default="", max_length=200)
    tags: list[str] = Field(default_factory=list, sa_type=JSON)


# Request bodies refuse what they do not know (a misspelt field, an unknown enum value) with a
# 422 naming it, instead of ignoring it: an operator's typo must not silently change a rollout.
STRICT = SQLModelConfig(extra="forbid")  # SQLModel's own ConfigDict type
Precision = Literal["fp32", "fp16", "int8"]
BackendName = Literal["", "auto", "onnxruntime", "tensorrt"]
Scenario = Literal["singlestream", "offline", "server", "stream"]
TRAINER_TASKS = ("classification", "detection")  # trainer/tasks/registry.py


class DeviceUpdate(SQLModel):
    model_config = STRICT
    name: str | None = Field(default=None, max_length=200)
    tags: list[str] | None = None
    hardware_class: str | None = Field(default=None, min_length=1, max_length=100)


class EnrollmentToken(SQLModel, table=True):
    """A token that enrols devices: several may exist, each with an expiry, a use count and
    revocation. One bound to a ``device_id`` (an operator's re-enrolment) re-enrols only that
    device, once. Only the sha256 of the token is stored."""

    __tablename__ = "enrollment_token"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    name: str = Field(default="", max_length=200)
    token_hash: str = Field(index=True, unique=True, max_length=64)
    expires_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    max_uses: int | None = None  # None = unlimited
    uses: int = 0
    revoked: bool = False
    device_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = _ts_field()


class EnrollmentTokenCreate(SQLModel):
    name: str = Field(default="", max_length=200)
    expires_in_s: int | None = Field(default=86_400, ge=60, le=366 * 86_400)  # None = never
    max_uses: int | None = Field(default=None, ge=1, le=1_000_000)


class EnrollmentTokenPublic(SQLModel):
    id: str
    name: str
    expires_at: datetime | None
    max_uses: int | None
    uses: int
    revoked: bool
    device_id: str | None
    created_at: datetime


class EnrollmentTokenCreated(EnrollmentTokenPublic):
    token: str  # shown once


class Device(DeviceBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    token_hash: str = Field(default="", max_length=64)
    hardware_class: str = Field(default="unknown", index=True, max_length=100)
    hardware_fingerprint: str = Field(default="", max_length=128)
    hardware: dict = Field(default_factory=dict, sa_type=JSON)
    capabilities: list[dict] = Field(default_factory=list, sa_type=JSON)
    agent_version: str = Field(default="", max_length=64)
    active_version: str = Field(default="", max_length=200)
    candidate_version: str = Field(default="", max_length=200)
    previous_version: str = Field(default="", max_length=200)  # what a rollback returns to
    revoked: bool = False
    connected: bool = False  # the gRPC control stream is open
    controller_id: str | None = Field(default=None, index=True, max_length=64)  # which process holds it
    telemetry_state: str = Field(default="unknown", max_length=16)  # MQTT retained state
    last_seen: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    enrolled_at: datetime = _ts_field()


class DevicePublic(DeviceBase):
    id: str
    hardware_class: str
    hardware_fingerprint: str
    hardware: dict
    capabilities: list[dict]
    agent_version: str
    active_version: str
    candidate_version: str
    previous_version: str
    revoked: bool
    connected: bool
    controller_id: str | None = None  # the controller process holding its stream
    telemetry_state: str
    online: bool = False
    last_seen: datetime | None
    enrolled_at: datetime

    @model_validator(mode="after")
    def _online(self) -> DevicePublic:
        self.online = (self.connected or self.telemetry_state == "online") and not self.revoked
        return self


class DevicesPublic(SQLModel):
    data: list[DevicePublic]
    count: int


class ControllerInstance(SQLModel, table=True):
    """A running controller process (``Settings.instance_id``); ``last_seen`` is refreshed every
    few seconds, so the others notice one that died and put its devices offline."""

    id: str = Field(primary_key=True, max_length=64)
    started_at: datetime = _ts_field()
    last_seen: datetime = _ts_field()
    database: str = Field(default="", max_length=16)


class ControllerInstancePublic(SQLModel):
    id: str
    started_at: datetime
    last_seen: datetime
    database: str
    streams: int = 0  # device streams it holds
    this: bool = False  # the process that answered


# ---------------------------------------------------------------- artifacts and models
class Artifact(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    kind: ArtifactKind = ArtifactKind.model
    name: str = Field(default="", max_length=200)
    sha256: str = Field(index=True, max_length=64)
    size_bytes: int = Field(default=0, sa_type=BigInteger)
    path: str = Field(max_length=1000)
    signature: str = Field(max_length=200)  # hex ed25519 over the raw sha256 digest
    manifest_json: str = ""
    created_at: datetime = _ts_field()


class ArtifactPublic(SQLModel):
    id: str
    kind: ArtifactKind
    name: str
    sha256: str
    size_bytes: int
    signature: str
    created_at: datetime


class ModelVersionBase(SQLModel):
    name: str = Field(index=True, max_length=200)
    version: str = Field(max_length=200)
    task: str = Field(default="classification", max_length=50)
    parent_version: str = Field(default="", max_length=200)
    source: str = Field(default="import", max_length=50)  # trainer | import


class ModelVersion(ModelVersionBase, table=True):
    __table_args__ = (UniqueConstraint("version", name="uq_modelversion_version"),)
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    artifact_id: str = Field(foreign_key="artifact.id", max_length=64)
    lineage: dict = Field(default_factory=dict, sa_type=JSON)
    metrics: dict = Field(default_factory=dict, sa_type=JSON)
    labels: list[str] = Field(default_factory=list, sa_type=JSON)
    precision: str = Field(default="fp32", max_length=20)
    created_at: datetime = _ts_field()


class ModelVersionPublic(ModelVersionBase):
    id: str
    artifact_id: str
    lineage: dict
    metrics: dict
    labels: list[str]
    precision: str
    created_at: datetime
    sha256: str = ""
    size_bytes: int = 0


class ModelVersionsPublic(SQLModel):
    data: list[ModelVersionPublic]
    count: int


class LineagePublic(SQLModel):
    version: str
    ancestors: list[ModelVersionPublic]  # parent first, root last
    children: list[ModelVersionPublic]


# ---------------------------------------------------------------- rollouts
class Selector(SQLModel):
    model_config = STRICT
    tags: list[str] = Field(default_factory=list)  # a device needs all of them
    hardware_classes: list[str] = Field(default_factory=list)  # any of them
    device_ids: list[str] = Field(default_factory=list)  # explicit devices (then tags/classes also filter)

    @model_validator(mode="after")
    def _not_empty(self) -> Selector:
        if not (self.tags or self.hardware_classes or self.device_ids):
            raise ValueError("selector needs tags, hardware_classes or device_ids")
        return self


class Strategy(SQLModel):
    model_config = STRICT
    canary_share: float = Field(default=0.1, ge=0, le=1)
    waves: int = Field(default=2, ge=1, le=100)
    max_failure_share: float = Field(default=0.0, ge=0, le=1)
    # gates against the version being replaced, measured on the same device (or its class)
    max_accuracy_drop: float | None = Field(default=1.0, ge=0)  # points; None = no accuracy gate
    min_fps_ratio: float | None = Field(default=0.9, gt=0)  # new fps >= ratio x old; None = no gate
    accuracy_metric: str = Field(default="", max_length=50)  # "" = first metric the report has
    deploy_timeout_s: float = Field(default=600, gt=0)
    rollback_on_abort: bool = True
    # gate_first: the candidate goes to the inactive slot, is measured there and switched in only
    # when the gate passes (a failing one never serves). activate_then_watch: it serves at once,
    # is gated on what it measured while serving, and must stay healthy (stream up, still
    # active) for health_window_s before it counts as succeeded; a failure rolls it back.
    mode: Literal["gate_first", "activate_then_watch"] = "gate_first"
    health_window_s: float = Field(default=0.0, ge=0, le=86_400)
    # dynamic batching of the model's live inference on each device (fleet.Deploy.batching);
    # both left at their defaults = the agent's own settings
    preferred_batch_sizes: list[int] = Field(default_factory=list, max_length=16)
    max_queue_delay_us: int = Field(default=0, ge=0, le=1_000_000)

    @field_validator("preferred_batch_sizes")
    @classmethod
    def _batch_sizes(cls, sizes: list[int]) -> list[int]:
        if any(not 1 <= b <= 1024 for b in sizes):
            raise ValueError(f"preferred batch sizes must be 1-1024, got {sizes}")
        return sorted(set(sizes))


class RolloutBase(SQLModel):
    model_version: str = Field(max_length=200)
    backend: str = Field(default="", max_length=50)
    precision: str = Field(default="fp32", max_length=20)


class RolloutCreate(RolloutBase):
    model_config = STRICT
    selector: Selector
    strategy: Strategy = Field(default_factory=Strategy)
    evaluation_artifact_id: str | None = None
    calibration_artifact_id: str | None = None

    @field_validator("precision")
    @classmethod
    def _precision(cls, v: str) -> str:
        if v not in ("fp32", "fp16", "int8"):
            raise ValueError("precision must be fp32, fp16 or int8")
        return v

    @field_validator("backend")
    @classmethod
    def _backend(cls, v: str) -> str:
        if v not in ("", "auto", "onnxruntime", "tensorrt"):
            raise ValueError(f"unknown backend {v!r}: auto, onnxruntime or tensorrt")
        return v


class Rollout(RolloutBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    selector: dict = Field(default_factory=dict, sa_type=JSON)
    strategy: dict = Field(default_factory=dict, sa_type=JSON)
    evaluation_artifact_id: str | None = Field(default=None, max_length=64)
    calibration_artifact_id: str | None = Field(default=None, max_length=64)
    state: RolloutState = RolloutState.pending
    current_wave: int = 0
    wave_started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    reason: str = ""
    created_at: datetime = _ts_field()
    updated_at: datetime = _ts_field()


class DeploymentPublic(SQLModel):
    id: str
    device_id: str
    wave: int
    state: DeploymentState
    previous_version: str
    command_id: str | None
    accuracy: float | None
    fps: float | None
    baseline_accuracy: float | None
    baseline_fps: float | None
    message: str
    updated_at: datetime


class Deployment(SQLModel, table=True):
    __table_args__ = (
        UniqueConstraint("rollout_id", "device_id", name="uq_deployment_rollout_device"),
        # the rollout engine's reads (migration 0011): in flight / pending of a wave, a wave's counts
        Index("ix_deployment_rollout_state_wave", "rollout_id", "state", "wave"),
        Index("ix_deployment_rollout_wave_state", "rollout_id", "wave", "state"),
    )
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    rollout_id: str = Field(foreign_key="rollout.id", index=True, max_length=64)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=64)
    wave: int = 0  # 0 = canary
    state: DeploymentState = DeploymentState.pending
    previous_version: str = Field(default="", max_length=200)
    command_id: str | None = Field(default=None, max_length=64)
    accuracy: float | None = None
    fps: float | None = None
    baseline_accuracy: float | None = None
    baseline_fps: float | None = None
    message: str = ""
    updated_at: datetime = _ts_field()


class RolloutPublic(RolloutBase):
    id: str
    selector: dict
    strategy: dict
    state: RolloutState
    current_wave: int
    waves_total: int = 0
    reason: str
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int] = Field(default_factory=dict)
    deployments: list[DeploymentPublic] = Field(default_factory=list)


class RolloutsPublic(SQLModel):
    data: list[RolloutPublic]
    count: int


# ---------------------------------------------------------------- commands
class Command(SQLModel, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    device_id: str = Field(foreign_key="device.id", index=True, max_length=64)
    kind: CommandKind
    payload: str = ""  # proto3 JSON of ControllerCommand (what goes on the wire, resent on reconnect)
    state: CommandState = CommandState.pending
    message: str = ""
    progress: float = 0.0
    model_version: str = Field(default="", max_length=200)
    rollout_id: str | None = Field(default=None, index=True, max_length=64)
    created_at: datetime = _ts_field()
    updated_at: datetime = _ts_field()


class CommandPublic(SQLModel):
    id: str
    device_id: str
    kind: CommandKind
    state: CommandState
    message: str
    progress: float
    model_version: str
    rollout_id: str | None
    created_at: datetime
    updated_at: datetime


class CommandsPublic(SQLModel):
    data: list[CommandPublic]
    count: int


class BenchmarkCreate(SQLModel):
    model_config = STRICT
    model_version: str = Field(max_length=200)
    backends: list[BackendName] = Field(default_factory=list, max_length=8)
    precisions: list[Precision] = Field(default_factory=lambda: ["fp32"], max_length=8)
    scenarios: list[Scenario] = Field(default_factory=lambda: ["singlestream", "offline"], max_length=8)
    duration_ms: int = Field(default=2000, ge=100, le=600_000)
    evaluation_artifact_id: str | None = None
    calibration_artifact_id: str | None = None
    round_id: str = Field(default="", max_length=100)
    # scenario "stream": N live copies of this clip (a shard: a .tar holding one video) through the
    # device's video pipeline, for each count in order until one misses; stream_step_s each
    stream_clip_artifact_id: str | None = None
    stream_counts: list[int] = Field(default_factory=lambda: [1, 2, 4, 8], min_length=1, max_length=8)
    stream_step_s: float = Field(default=10.0, ge=0.2, le=600)

    @field_validator("stream_counts")
    @classmethod
    def _counts_in_range(cls, counts: list[int]) -> list[int]:
        if any(not 1 <= n <= 64 for n in counts):
            raise ValueError(f"stream counts must be 1..64, got {counts}")
        return counts

    @model_validator(mode="after")
    def _stream_needs_a_clip(self) -> BenchmarkCreate:
        if "stream" in self.scenarios and not self.stream_clip_artifact_id:
            raise ValueError(
                "scenario 'stream' needs stream_clip_artifact_id (a shard holding the reference clip)"
            )
        return self


class CalibrateCreate(SQLModel):
    model_config = STRICT
    model_version: str = Field(max_length=200)
    backend: BackendName = ""
    precision: Precision = "int8"
    calibration_artifact_id: str | None = None


class SwitchCreate(SQLModel):
    model_config = STRICT
    model_version: str = Field(min_length=1, max_length=200)


class RollbackCreate(SQLModel):
    model_config = STRICT
    to_version: str = Field(default="", max_length=200)  # "" = the version active before the last switch
    reason: str = Field(default="operator", max_length=500)


class PipelineCreate(SQLModel):
    """A video pipeline spec (agent/specs/pipeline.yaml keys, as JSON); the device validates it
    and the command fails with its reason (the unknown key, the source that cannot open)."""

    spec: dict


class PipelineGroupCreate(PipelineCreate):
    """The same pipeline on every device of a group: by tag, hardware class, or both."""

    tag: str | None = Field(default=None, max_length=100)
    hardware_class: str | None = Field(default=None, max_length=100)


class PipelineSourceCreate(SQLModel):
    source: dict  # {id, uri, kind, live, pace, loop, fps, event_rate, reconnect}


# ---------------------------------------------------------------- results
class ResultBase(SQLModel):
    device_id: str = Field(index=True, max_length=64)
    hardware_class: str = Field(index=True, max_length=100)
    model_version: str = Field(index=True, max_length=200)
    backend: str = Field(max_length=50)
    precision: str = Field(max_length=20)
    accuracy: float | None = None  # primary metric, percent
    fps: float | None = None  # best throughput (offline when present)
    latency_p50_ms: float | None = None  # single-stream
    latency_p90_ms: float | None = None
    latency_p99_ms: float | None = None
    peak_memory_bytes: int = Field(default=0, sa_type=BigInteger)
    round_id: str = Field(default="", max_length=100)
    command_id: str = Field(default="", index=True, max_length=64)
    # the stream scenario: most live streams of the reference clip each kept at stream_fps (None: not run)
    stream_capacity: int | None = None
    stream_fps: float | None = None


class Result(ResultBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    artifact_id: str = Field(default="", max_length=64)
    metrics: dict = Field(default_factory=dict, sa_type=JSON)
    scenarios: list[dict] = Field(default_factory=list, sa_type=JSON)
    errors: list[str] = Field(default_factory=list, sa_type=JSON)
    build_time_s: float = 0.0
    calibration_time_s: float = 0.0
    engine_key: str = Field(default="", max_length=200)
    created_at: datetime = _ts_field()


class ResultPublic(ResultBase):
    id: str
    artifact_id: str
    metrics: dict
    scenarios: list[dict]
    errors: list[str]
    build_time_s: float
    calibration_time_s: float
    engine_key: str
    created_at: datetime


class ResultsPublic(SQLModel):
    data: list[ResultPublic]
    count: int


class MatrixCell(SQLModel):
    hardware_class: str
    model_version: str
    backend: str
    precision: str
    devices: int
    reports: int
    accuracy: float | None
    fps: float | None
    latency_p50_ms: float | None
    latency_p99_ms: float | None


class ResultsMatrix(SQLModel):
    hardware_classes: list[str]
    model_versions: list[str]
    cells: list[MatrixCell]


# ---------------------------------------------------------------- telemetry
class TelemetryAggregate(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("device_id", "window_start", name="uq_telemetry_device_window"),)
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=64)
    window_start: datetime = Field(sa_type=DateTime(timezone=True))
    samples: int = 0
    fps_mean: float | None = None
    latency_p99_ms_max: float | None = None
    cpu_percent_mean: float | None = None
    memory_bytes_max: int | None = Field(default=None, sa_type=BigInteger)
    temperature_c_max: float | None = None
    stream_fps_mean: float | None = None  # frames/s of every video pipeline's sources together
    requests: int = Field(default=0, sa_type=BigInteger)
    active_version: str = Field(default="", max_length=200)


class SeriesPoint(SQLModel):
    """One one-minute window of a device's telemetry (the dashboard's charts)."""

    t: datetime
    fps: float | None
    latency_p99_ms: float | None
    cpu_percent: float | None
    memory_bytes: int | None
    temperature_c: float | None
    stream_fps: float | None = None
    requests: int


class DeviceSeries(SQLModel):
    device_id: str
    window_s: int
    since: datetime
    points: list[SeriesPoint]


class TelemetryAggregatePublic(SQLModel):
    device_id: str
    window_start: datetime
    samples: int
    fps_mean: float | None
    latency_p99_ms_max: float | None
    cpu_percent_mean: float | None
    memory_bytes_max: int | None
    temperature_c_max: float | None = None
    stream_fps_mean: float | None = None
    requests: int
    active_version: str


class DeviceEvent(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True, max_length=64)
    event: str = Field(max_length=50)
    model_version: str = Field(default="", max_length=200)
    details: dict = Field(default_factory=dict, sa_type=JSON)
    ts: datetime = _ts_field()


# ---------------------------------------------------------------- trainer jobs
class JobBase(SQLModel):
    task: str = Field(default="classification", min_length=1, max_length=50)
    action: str = Field(min_length=1, max_length=50)
    spec: dict | str = Field(default_factory=dict, sa_type=JSON)  # the spec itself, or a path to a YAML spec
    overrides: list[str] = Field(default_factory=list, sa_type=JSON)  # "train.epochs=3", ...
    import_artifact: bool = True  # register the exported ONNX + manifest as a model version


class JobCreate(JobBase):
    model_config = STRICT

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str) -> str:
        if v not in TRAINER_TASKS:
            raise ValueError(f"unknown task {v!r}: one of {', '.join(TRAINER_TASKS)}")
        return v


class Job(JobBase, table=True):
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    state: JobState = JobState.queued
    result: dict = Field(default_factory=dict, sa_type=JSON)
    error: str = ""
    created_at: datetime = _ts_field()
    started_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))
    finished_at: datetime | None = Field(default=None, sa_type=DateTime(timezone=True))


class JobPublic(JobBase):
    id: str
    state: JobState
    result: dict
    error: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class JobsPublic(SQLModel):
    data: list[JobPublic]
    count: int


class Message(SQLModel):
    message: str
