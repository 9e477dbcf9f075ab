"""The typed pipeline spec (``edgeloop agent stream -e PIPELINE.yaml [key=value ...]``).

Validated like the trainer's specs: the YAML overrides the defaults, ``key.sub=value`` arguments
override the YAML (``sources.0.uri=cam.mp4`` indexes a list), and an unknown key, a wrong type or
an out-of-range value is refused before anything starts, the error naming the key. The agent
cannot import the trainer (it has no torch and no OmegaConf), so the small loader lives here.
``agent/specs/pipeline.yaml`` ships every key with its default and a comment.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

DEFAULT_SPEC = Path(__file__).resolve().parents[1] / "specs" / "pipeline.yaml"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")  # an MQTT topic level, a metric label


class SpecError(ValueError):
    """A pipeline spec that cannot run; the message names every bad key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class SourceKind(str, Enum):
    AUTO = "auto"
    FILE = "file"
    RTSP = "rtsp"
    HTTP = "http"  # an MJPEG (multipart/x-mixed-replace) stream
    V4L2 = "v4l2"
    IMAGES = "images"


class EventRate(str, Enum):
    EVERY_FRAME = "every_frame"
    ON_CHANGE = "on_change"  # only when an object entered or left (a track id, or the label)


class Reconnect(_Strict):
    initial_backoff_s: float = Field(default=0.5, gt=0)
    max_backoff_s: float = Field(default=10.0, gt=0)
    max_attempts: int = Field(default=0, ge=0, description="0 = forever")


class SourceSpec(_Strict):
    id: str
    uri: str
    kind: SourceKind = SourceKind.AUTO
    live: bool | None = None  # None: rtsp, http and v4l2 are live; files and image folders are not
    pace: bool = False  # play a file at its own frame rate (real time) instead of as fast as possible
    loop: bool = False  # start a file again at its end
    fps: float = Field(
        default=0.0, ge=0
    )  # image folders: timestamps at this rate (and the pace); v4l2: asked rate
    event_rate: EventRate | None = None  # None: the pipeline's events.rate
    reconnect: Reconnect = Field(default_factory=Reconnect)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"source id {value!r}: letters, digits, '_', '.', '-' (at most 63)")
        return value

    def resolved_kind(self) -> SourceKind:
        if self.kind is not SourceKind.AUTO:
            return self.kind
        uri = self.uri.lower()
        if uri.startswith(("rtsp://", "rtsps://")):
            return SourceKind.RTSP
        if uri.startswith(("http://", "https://")):
            return SourceKind.HTTP
        if uri.startswith("/dev/video") or uri.startswith("v4l2://"):
            return SourceKind.V4L2
        if Path(self.uri).is_dir():
            return SourceKind.IMAGES
        return SourceKind.FILE

    def is_live(self) -> bool:
        if self.live is not None:
            return self.live
        return self.resolved_kind() in (SourceKind.RTSP, SourceKind.HTTP, SourceKind.V4L2)


class ModelSpec(_Strict):
    path: str = "active"  # "active" = the model in the agent's active slot (follows switches)
    manifest: str | None = None  # default: manifest.json beside the ONNX
    backend: str = "auto"  # auto | onnxruntime | tensorrt
    precision: str = "fp32"  # fp32 | fp16 | int8
    device: str | None = None  # cpu | gpu:N | dla:N
    calib: str | None = None  # INT8 calibration images
    # engine calls in flight at once (batches numbered, published back in order); 0 = two when
    # there are two cores or more, else one (infer.engine_inflight)
    inflight: int = Field(default=0, ge=0, le=16)
    # CPU intra-op threads of each call of the pipeline's own engine (model.path: MODEL.onnx);
    # 0 = the agent's --threads, else the cores shared out over the calls in flight
    threads: int = Field(default=0, ge=0, le=256)

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        if value not in ("fp32", "fp16", "int8"):
            raise ValueError(f"precision {value!r}: fp32 | fp16 | int8")
        return value


class Batching(_Strict):
    max_batch: int = Field(default=8, ge=1, le=256)
    max_wait_ms: float = Field(default=10.0, ge=0)


class DropPolicy(str, Enum):
    OLDEST = "oldest"  # keep the newest frames: the view stays current (DeepStream's leaky queue)
    NEWEST = "newest"  # keep what is queued, refuse the new frame


class LivePolicy(_Strict):
    queue: int = Field(default=2, ge=1, description="frames a live source may have waiting")
    drop: DropPolicy = DropPolicy.OLDEST


class Postprocess(_Strict):
    score_threshold: float = Field(default=0.5, ge=0, le=1)
    max_detections: int = Field(default=100, ge=1)


class TrackerKind(str, Enum):
    BYTETRACK = "bytetrack"
    NONE = "none"


class TrackerSpec(_Strict):
    kind: TrackerKind = TrackerKind.BYTETRACK  # ignored (off) for classification models
    lost_track_buffer: int = Field(default=30, ge=0)
    track_activation_threshold: float = Field(default=0.5, ge=0, le=1)
    minimum_consecutive_frames: int = Field(default=1, ge=1)
    minimum_iou_threshold: float = Field(default=0.1, ge=0, le=1)
    high_conf_det_threshold: float = Field(default=0.6, ge=0, le=1)


class Events(_Strict):
    rate: EventRate = EventRate.EVERY_FRAME


class MqttSink(_Strict):
    enabled: bool = False  # through the agent's telemetry client (its broker, its device id)


class JsonlSink(_Strict):
    path: str | None = None  # one event per line


class Mp4Sink(_Strict):
    path: str | None = None  # annotated video; with several sources, one file each: NAME.<source>.mp4
    codec: str = "h264"
    fps: float = Field(default=0.0, ge=0)  # 0: the source's rate, else 25


class MjpegSink(_Strict):
    port: int = Field(default=-1, ge=-1, le=65535)  # -1 = off, 0 = a free port
    host: str = "127.0.0.1"
    quality: int = Field(default=80, ge=10, le=95)
    max_fps: float = Field(default=15.0, ge=0)  # per viewer; 0 = every frame


class RtspSink(_Strict):
    url: str | None = None  # rtsp://server/path: push the annotated stream to an RTSP server (H.264)
    fps: float = Field(default=0.0, ge=0)


class Sinks(_Strict):
    mqtt: MqttSink = Field(default_factory=MqttSink)
    jsonl: JsonlSink = Field(default_factory=JsonlSink)
    mp4: Mp4Sink = Field(default_factory=Mp4Sink)
    mjpeg: MjpegSink = Field(default_factory=MjpegSink)
    rtsp: RtspSink = Field(default_factory=RtspSink)


class PipelineSpec(_Strict):
    name: str = "pipeline"
    sources: list[SourceSpec] = Field(default_factory=list)
    model: ModelSpec = Field(default_factory=ModelSpec)
    batching: Batching = Field(default_factory=Batching)
    live_policy: LivePolicy = Field(default_factory=LivePolicy)
    postprocess: Postprocess = Field(default_factory=Postprocess)
    tracker: TrackerSpec = Field(default_factory=TrackerSpec)
    events: Events = Field(default_factory=Events)
    sinks: Sinks = Field(default_factory=Sinks)
    metrics_interval_s: float = Field(default=5.0, gt=0)

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _ID.match(value):
            raise ValueError(f"pipeline name {value!r}: letters, digits, '_', '.', '-' (at most 63)")
        return value

    @model_validator(mode="after")
    def _unique_ids(self) -> PipelineSpec:
        ids = [s.id for s in self.sources]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"source ids must be unique: {dupes}")
        return self


# ------------------------------------------------------------------ loading
def _allowed_keys(loc: tuple) -> list[str]:
    model: Any = PipelineSpec
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        field = (
            model.model_fields.get(str(part))
            if isinstance(model, type) and issubclass(model, BaseModel)
            else None
        )
        if field is None:
            return []
        ann = field.annotation
        args = getattr(ann, "__args__", ()) or ()
        candidates = [ann, *args]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return sorted(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _format(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid pipeline spec ({origin}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc) or "<top>"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(loc)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            did = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"  unknown key '{key}'{did}; allowed keys here: {', '.join(allowed)}")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  key '{key}': {err['msg']}{got_s}")
    return "\n".join(lines)


def apply_override(data: dict, item: str) -> None:
    """``a.b.0.c=value`` into ``data``; the value is parsed as YAML (``1``, ``true``, ``[a]``)."""
    if "=" not in item or item.startswith("="):
        raise SpecError(f"override {item!r} is not of the form key.sub=value")
    path, text = item.split("=", 1)
    value = yaml.safe_load(text) if text else ""
    parts = path.split(".")
    node: Any = data
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise SpecError(f"override {item!r}: {'.'.join(parts[:i])} has no item {part}")
            index = int(part)
            if index == len(node):
                node.append({})
            if last:
                node[index] = value
            else:
                node = node[index]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {} if not parts[i + 1].isdigit() else [])
        else:
            raise SpecError(f"override {item!r}: {'.'.join(parts[:i])} is not a mapping or a list")


def load_pipeline_spec(
    source: str | Path | Mapping[str, Any] | None, overrides: Iterable[str] = ()
) -> PipelineSpec:
    """Read a YAML file (or take a mapping), apply the overrides, validate. Raises ``SpecError``."""
    if source is None:
        data: Any = {}
        origin = "<defaults>"
    elif isinstance(source, Mapping):
        data = yaml.safe_load(yaml.safe_dump(dict(source)))  # a deep copy of plain data
        origin = "<mapping>"
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"pipeline spec not found: {path}")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise SpecError(f"cannot parse pipeline spec {path}: {exc}") from exc
        origin = str(path)
    if not isinstance(data, dict):
        raise SpecError(f"pipeline spec {origin} must be a mapping at the top level")
    for item in overrides:
        apply_override(data, item)
    try:
        return PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format(exc, origin)) from None


def source_spec(data: Mapping[str, Any]) -> SourceSpec:
    """One source (added at run time), validated the same way."""
    try:
        return SourceSpec.model_validate(dict(data))
    except ValidationError as exc:
        raise SpecError(_format(exc, "source")) from None
