"""Goals per device class: what a class needs from its model, checked against measured reports.

Goals come from the REST API or a YAML file such as::

    defaults: {max_accuracy_drop: 1.0}
    classes:
      cpu-1t: {min_fps: 400}
      cpu-2t: {max_p90_latency_ms: 4.0, max_memory_mb: 512}
      cpu-1t-slow: {min_speedup: 4.0}   # offline FPS >= 4x the baseline's, on the same class
      jetson: {min_streams: 4, stream_fps: 15}  # 4 live streams of the reference clip at 15 FPS each

An unknown key is refused with the allowed keys named; nothing here reads an estimate.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class GoalError(ValueError):
    """A goals file or payload that cannot be used; the message names the bad key."""


class ClassGoal(BaseModel):
    """What one device class needs. Throughput is the offline scenario; latency is single-stream p90;
    streams are the benchmark's stream scenario (live copies of the reference clip through the
    video pipeline, each keeping ``stream_fps``)."""

    model_config = ConfigDict(extra="forbid")

    min_fps: float | None = Field(default=None, gt=0)
    min_speedup: float | None = Field(
        default=None, gt=0, description="offline FPS at least this many times the baseline's, same class"
    )
    max_p90_latency_ms: float | None = Field(default=None, gt=0)
    max_accuracy_drop: float = Field(
        default=1.0, ge=0, description="points below the baseline, same device class"
    )
    max_memory_mb: float | None = Field(default=None, gt=0)
    min_streams: int | None = Field(
        default=None, ge=1, le=64, description="live streams of the reference clip, each at stream_fps"
    )
    stream_fps: float | None = Field(default=None, gt=0, le=240, description="the rate min_streams is at")

    @model_validator(mode="after")
    def _needs_a_speed_goal(self) -> ClassGoal:
        if (self.min_streams is None) != (self.stream_fps is None):
            given, missing = (
                ("min_streams", "stream_fps") if self.stream_fps is None else ("stream_fps", "min_streams")
            )
            raise ValueError(f"{given} needs {missing} (min_streams streams, each at stream_fps)")
        if (
            self.min_fps is None
            and self.max_p90_latency_ms is None
            and self.min_speedup is None
            and self.min_streams is None
        ):
            raise ValueError("a class goal needs min_fps, min_speedup, max_p90_latency_ms or min_streams")
        return self

    @property
    def wants_streams(self) -> bool:
        return self.min_streams is not None


class Goals(BaseModel):
    model_config = ConfigDict(extra="forbid")

    defaults: dict[str, float] = Field(default_factory=dict)
    classes: dict[str, ClassGoal] = Field(default_factory=dict)


def parse_goals(data: dict) -> dict[str, ClassGoal]:
    """Validate a goals mapping; ``defaults`` fill keys a class leaves out."""
    if not isinstance(data, dict):
        raise GoalError("goals must be a mapping with 'classes' (and optional 'defaults')")
    allowed = set(ClassGoal.model_fields)
    defaults = data.get("defaults") or {}
    for key in defaults:
        if key not in allowed:
            raise GoalError(f"goals.defaults.{key}: unknown key; allowed: {', '.join(sorted(allowed))}")
    unknown_top = set(data) - {"defaults", "classes"}
    if unknown_top:
        raise GoalError(f"goals: unknown key(s) {sorted(unknown_top)}; allowed: classes, defaults")
    goals: dict[str, ClassGoal] = {}
    for name, raw in (data.get("classes") or {}).items():
        if not isinstance(raw, dict):
            raise GoalError(f"goals.classes.{name}: expected a mapping of {', '.join(sorted(allowed))}")
        for key in raw:
            if key not in allowed:
                raise GoalError(
                    f"goals.classes.{name}.{key}: unknown key; allowed: {', '.join(sorted(allowed))}"
                )
        try:
            goals[name] = ClassGoal(**{**defaults, **raw})
        except ValidationError as exc:
            first = exc.errors()[0]
            loc = ".".join(str(p) for p in first["loc"])
            msg = str(first["msg"]).removeprefix("Value error, ")
            raise GoalError(f"goals.classes.{name}{'.' + loc if loc else ''}: {msg}") from exc
    if not goals:
        raise GoalError("goals.classes is empty: name at least one device class")
    return goals


def load_goals(path: str | Path) -> dict[str, ClassGoal]:
    path = Path(path)
    if not path.is_file():
        raise GoalError(f"goals file not found: {path}")
    return parse_goals(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
