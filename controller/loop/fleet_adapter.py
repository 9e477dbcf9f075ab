"""The loop's ``FleetPort`` over a running controller, through its in-process API.

Candidates are imported like any artifact; a class's canary measures them with a benchmark
command at every precision its capability list says it can build (INT8 calibrated on the
device from the calibration shard, accuracy from the evaluation shard); the chosen model goes
out with a normal gated rollout. Nothing here estimates: a ``Measurement`` is a stored report.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass

from controller.context import ControllerContext
from controller.inprocess import InProcessAPI
from controller.loop.engine import Candidate
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
