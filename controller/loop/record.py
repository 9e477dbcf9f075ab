"""What one loop did, as plain data: every measurement, the choice per class, the timeline and
the lineage. Saved as ``record.json`` so a report can be rebuilt from a finished run without
re-running anything (``controller/loop/report.py``)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from controller.loop.selection import Choice, Measurement


@dataclass
class TimelineEvent:
    t: float  # seconds since the loop started
    device_class: str
    device_id: str
    event: str  # deploy, benchmarked, switched, rolled_back, rollout_started, rollout_done ...
    model_version: str = ""
    detail: str = ""


@dataclass
class LineageNode:
    version: str
    parent: str
    action: str
    detail: str = ""
    backbone: str = ""


@dataclass
class ClassSummary:
    device_class: str
    goal: dict
    chosen_version: str
    chosen_backend: str
    chosen_precision: str
    meets_goal: bool
    reason: str
    baseline_fps: float
    chosen_fps: float
    baseline_accuracy: float
    chosen_accuracy: float
    # the chosen model's stream scenario on the class's canary (None: not measured)
    chosen_stream_capacity: int | None = None
    chosen_stream_fps: float = 0.0

    @property
    def speedup(self) -> float:
        return self.chosen_fps / self.baseline_fps if self.baseline_fps else 0.0


@dataclass
class LoopRecord:
    task: str
    metric_name: str  # "top-1 accuracy (%)" or "mAP@[.5:.95] (x100)"
    emulation_note: str
    rounds: int
    measurements: list[Measurement] = field(default_factory=list)
    classes: list[ClassSummary] = field(default_factory=list)
    timeline: list[TimelineEvent] = field(default_factory=list)
    lineage: list[LineageNode] = field(default_factory=list)
    round_log: list[dict] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # candidates a device could not build or measure
    stream_clip: str = ""  # what the stream scenario played (for the report)
    stream_frames: list[str] = field(default_factory=list)  # annotated frames (files beside the report)
    stream_frames_note: str = ""  # which model drew them, on which clip

    def save(self, path: Path) -> None:
        data = asdict(self)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")

    @staticmethod
    def load(path: Path) -> LoopRecord:
        d = json.loads(path.read_text(encoding="utf-8"))
        return LoopRecord(
            task=d["task"],
            metric_name=d["metric_name"],
            emulation_note=d["emulation_note"],
            rounds=d["rounds"],
            measurements=[Measurement(**x) for x in d["measurements"]],
            classes=[ClassSummary(**x) for x in d["classes"]],
            timeline=[TimelineEvent(**x) for x in d["timeline"]],
            lineage=[LineageNode(**x) for x in d["lineage"]],
            round_log=d.get("round_log", []),
            failures=d.get("failures", []),
            stream_clip=d.get("stream_clip", ""),
            stream_frames=d.get("stream_frames", []),
            stream_frames_note=d.get("stream_frames_note", ""),
        )


def summarize_choice(choice: Choice, goal: dict) -> ClassSummary:
    chosen, base = choice.chosen, choice.baseline
    return ClassSummary(
        device_class=choice.device_class,
        goal=goal,
        chosen_version=chosen.model_version if chosen else "",
        chosen_backend=chosen.backend if chosen else "",
        chosen_precision=chosen.precision if chosen else "",
        meets_goal=choice.meets_goal,
        reason=choice.reason,
        baseline_fps=base.fps if base else 0.0,
        chosen_fps=chosen.fps if chosen else 0.0,
        baseline_accuracy=base.accuracy if base else 0.0,
        chosen_accuracy=chosen.accuracy if chosen else 0.0,
        chosen_stream_capacity=chosen.stream_capacity if chosen else None,
        chosen_stream_fps=chosen.stream_fps if chosen else 0.0,
    )
