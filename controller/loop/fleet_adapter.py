"""The loop's ``FleetPort`` over a running controller, through its in-process API.

Candidates are imported like any artifact; a class's canary measures them with a benchmark
command at every precision its capability list says it can build (INT8 calibrated on the
device from the calibration shard, accuracy from the evaluation shard); the chosen model goes
out with a normal gated rollout. Nothing here estimates: a ``Measurement`` is a stored report.

With a reference clip (``stream_clip_artifact_id``, a shard holding one video), a benchmark also
runs the stream scenario: live copies of the clip through the device's video pipeline. When a
class goal sets ``min_streams``, every candidate runs it (``with_stream_goals``); otherwise only
the chosen model does, so the report can show what it sustains (``stream_capacity``).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, replace

from controller.context import ControllerContext
from controller.inprocess import InProcessAPI
from controller.loop.engine import Candidate
from controller.loop.goals import ClassGoal, GoalError
from controller.loop.record import TimelineEvent
from controller.loop.selection import Measurement
from controller.models import DevicePublic, ResultPublic

log = logging.getLogger(__name__)

PRECISION_ORDER = ("fp32", "fp16", "int8")


@dataclass
class FleetSettings:
    evaluation_artifact_id: str
    calibration_artifact_id: str | None = None
    duration_ms: int = 2000  # per benchmark scenario
    scenarios: tuple[str, ...] = ("singlestream", "offline")
    report_timeout_s: float = 900.0
    rollout_waves: int = 2
    rollout_canary_share: float = 0.5
    rollout_max_accuracy_drop: float | None = 1.0
    stream_clip_artifact_id: str | None = None  # the stream scenario's reference clip; None: not run
    stream_counts: tuple[int, ...] = (1, 2, 4, 8)  # tried in order until one misses
    stream_step_s: float = 10.0  # seconds each count is measured
    stream_every_benchmark: bool = False  # a goal judges streams: every candidate runs the scenario


def with_stream_goals(settings: FleetSettings, goals: dict[str, ClassGoal]) -> FleetSettings:
    """Settings that measure what the goals judge: when a class sets ``min_streams``, every
    benchmark runs the stream scenario (refused without a clip, naming the class's key), and the
    counts tried include each ``min_streams``."""
    wanted = {name: g.min_streams for name, g in goals.items() if g.min_streams is not None}
    if not wanted:
        return settings
    if not settings.stream_clip_artifact_id:
        first = sorted(wanted)[0]
        raise GoalError(
            f"goals.classes.{first}.min_streams: measuring stream capacity needs a reference clip "
            "(stream_clip_artifact_id: a shard holding one video)"
        )
    counts = tuple(sorted(set(settings.stream_counts) | set(wanted.values())))
    return replace(settings, stream_counts=counts, stream_every_benchmark=True)


def precisions_of(device_capabilities: list[dict]) -> list[str]:
    """Precisions a device says it can build (available capabilities only), in a stable order."""
    offered = {
        str(c.get("precision", "")).lower()
        for c in device_capabilities
        if c.get("available", True) and c.get("precision")
    }
    return [p for p in PRECISION_ORDER if p in offered] or ["fp32"]


def measurement_from_report(report: ResultPublic, device_class: str) -> Measurement | None:
    """A stored report as a ``Measurement``; None when the device could not measure it."""
    if report.errors or report.fps is None or report.accuracy is None:
        return None
    return Measurement(
        device_class=device_class,
        model_version=report.model_version,
        backend=report.backend,
        precision=report.precision,
        accuracy=float(report.accuracy),
        fps=float(report.fps),
        p90_latency_ms=float(report.latency_p90_ms or 0.0),
        memory_mb=report.peak_memory_bytes / 1e6 if report.peak_memory_bytes else 0.0,
        device_id=report.device_id,
        stream_capacity=report.stream_capacity if report.stream_fps else None,
        stream_fps=float(report.stream_fps or 0.0),
    )


class ControllerFleet:
    """Measures and rolls out through the controller whose context it is given."""

    def __init__(self, ctx: ControllerContext, settings: FleetSettings, round_id: str = "loop") -> None:
        self.api = InProcessAPI(ctx)
        self.s = settings
        self.round_id = round_id
        self.failures: list[str] = []  # reports a device sent with errors (kept for the record)

    def classes(self) -> dict[str, list[str]]:
        by_class: dict[str, list[tuple[str, str]]] = defaultdict(list)
        for d in self.api.list_devices(online=True):
            by_class[d.hardware_class].append((d.name, d.id))
        return {c: [i for _, i in sorted(devs)] for c, devs in sorted(by_class.items())}

    def display_name(self, device_id: str) -> str:
        try:
            return self._device(device_id).name
        except KeyError:
            return device_id

    def _device(self, device_id: str) -> DevicePublic:
        for d in self.api.list_devices():
            if d.id == device_id:
                return d
        raise KeyError(f"device {device_id} is not enrolled")

    def publish(self, candidate: Candidate) -> str:
        return self.api.import_artifact_dir(candidate.artifact_dir, source="loop").version

    def _stream_fields(self) -> dict:
        return {
            "stream_clip_artifact_id": self.s.stream_clip_artifact_id,
            "stream_counts": list(self.s.stream_counts),
            "stream_step_s": self.s.stream_step_s,
        }

    def measure(self, device_id: str, version: str) -> list[Measurement]:
        device = self._device(device_id)
        body = {
            "model_version": version,
            "backends": [],
            "precisions": precisions_of(device.capabilities),
            "scenarios": list(self.s.scenarios),
            "duration_ms": self.s.duration_ms,
            "evaluation_artifact_id": self.s.evaluation_artifact_id,
            "calibration_artifact_id": self.s.calibration_artifact_id,
            "round_id": self.round_id,
        }
        if self.s.stream_every_benchmark:
            body |= {"scenarios": [*self.s.scenarios, "stream"], **self._stream_fields()}
        command_id = self.api.send_benchmark(device_id, body)
        (cmd,) = self.api.wait_for_commands([command_id], timeout_s=self.s.report_timeout_s)
        if cmd.state.value != "succeeded":
            self.failures.append(f"{device.name} {version}: {cmd.message}")
            log.warning("benchmark of %s on %s failed: %s", version, device.name, cmd.message)
            return []
        out = []
        for report in self.api.wait_for_reports([command_id], timeout_s=self.s.report_timeout_s):
            m = measurement_from_report(report, device.hardware_class)
            if m is None:
                self.failures.append(
                    f"{device.name} {version} {report.precision}: {'; '.join(report.errors)}"
                )
                continue
            out.append(m)
        return out

    def stream_capacity(self, device_id: str, chosen: Measurement) -> Measurement | None:
        """The stream scenario alone for a chosen (version, backend, precision) on ``device_id``;
        the measurement with its capacity, or None (no clip configured, or the device failed)."""
        if not self.s.stream_clip_artifact_id:
            return None
        device = self._device(device_id)
        body = {
            "model_version": chosen.model_version,
            "backends": [chosen.backend] if chosen.backend else [],
            "precisions": [chosen.precision],
            "scenarios": ["stream"],
            "calibration_artifact_id": self.s.calibration_artifact_id,
            "round_id": self.round_id,
            **self._stream_fields(),
        }
        command_id = self.api.send_benchmark(device_id, body)
        (cmd,) = self.api.wait_for_commands([command_id], timeout_s=self.s.report_timeout_s)
        reports = (
            self.api.wait_for_reports([command_id], timeout_s=self.s.report_timeout_s)
            if cmd.state.value == "succeeded"
            else []
        )
        for report in reports:
            if report.stream_fps and not report.errors:
                return replace(
                    chosen, stream_capacity=report.stream_capacity, stream_fps=float(report.stream_fps)
                )
        why = (
            cmd.message if cmd.state.value != "succeeded" else "; ".join(e for r in reports for e in r.errors)
        )
        self.failures.append(
            f"{device.name} {chosen.model_version} {chosen.precision} stream scenario: {why}"
        )
        return None

    def roll_out(self, device_class: str, measurement: Measurement) -> list[TimelineEvent]:
        t0 = time.monotonic()
        rollout = self.api.create_rollout(
            {
                "model_version": measurement.model_version,
                "backend": measurement.backend,
                "precision": measurement.precision,
                "selector": {"hardware_classes": [device_class]},
                "strategy": {
                    "canary_share": self.s.rollout_canary_share,
                    "waves": self.s.rollout_waves,
                    "max_accuracy_drop": self.s.rollout_max_accuracy_drop,
                    "min_fps_ratio": None,  # the loop chose it for speed already; gate on accuracy
                },
                "evaluation_artifact_id": self.s.evaluation_artifact_id,
                "calibration_artifact_id": self.s.calibration_artifact_id,
            }
        )
        events = [
            TimelineEvent(0.0, device_class, "", "rollout_started", measurement.model_version, rollout.id)
        ]
        done = self.api.wait_for_rollout(rollout.id, timeout_s=self.s.report_timeout_s)
        created = done.created_at
        for d in sorted(done.deployments, key=lambda d: (d.wave, d.updated_at)):
            # place each deployment by when it finished, relative to the rollout's start
            offset = (d.updated_at - created).total_seconds() if d.updated_at and created else 0.0
            detail = f"wave {d.wave}: {d.state.value}"
            if d.accuracy is not None and d.fps is not None:
                detail += f", {d.accuracy:.2f}% at {d.fps:.1f} img/s"
            if d.message:
                detail += f" ({d.message[:120]})"
            events.append(TimelineEvent(max(0.0, offset), device_class, self.display_name(d.device_id), d.state.value,
                                        measurement.model_version, detail))  # fmt: skip
        events.append(
            TimelineEvent(
                time.monotonic() - t0,
                device_class,
                "",
                f"rollout_{done.state.value}",
                measurement.model_version,
                done.reason,
            )  # fmt: skip
        )
        return events
