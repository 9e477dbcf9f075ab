"""The rounds: baseline on every class, then candidates until each class meets its goal.

The engine is plain logic over two narrow ports, so the same code drives the demo (local
agents) and a real fleet: ``TrainerPort`` makes candidate artifacts (through ``trainer.jobs``)
and ``FleetPort`` imports them, has a canary of each class measure them at each precision its
hardware offers, and rolls the chosen model out with the rollout gates. Every candidate,
measurement and decision lands in the ``LoopRecord``, so the report can say why each class
runs what it runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from controller.loop.goals import ClassGoal
from controller.loop.planner import CandidateRequest, Ladders, plan_next_round
from controller.loop.record import LineageNode, LoopRecord, TimelineEvent, summarize_choice
from controller.loop.selection import Choice, Measurement, choose

log = logging.getLogger(__name__)


@dataclass
class Candidate:
    """A trained artifact the fleet can measure."""

    version: str
    artifact_dir: Path
    parent: str
    action: str
    detail: str = ""
    backbone: str = ""


class TrainerPort(Protocol):
    def baseline(self) -> Candidate: ...

    def make(self, request: CandidateRequest, parent: Candidate) -> Candidate: ...


class FleetPort(Protocol):
    def classes(self) -> dict[str, list[str]]:
        """device class -> device ids (canary first)."""
        ...

    def publish(self, candidate: Candidate) -> str:
        """Import the artifact into the controller; returns its model version."""
        ...

    def measure(self, device_id: str, version: str) -> list[Measurement]:
        """Benchmark on one device at every precision it can build; returns what it reported."""
        ...

    def stream_capacity(self, device_id: str, chosen: Measurement) -> Measurement | None:
        """The chosen candidate with its stream capacity measured on ``device_id`` (the
        benchmark's stream scenario), or None when the fleet has no reference clip."""
        ...

    def roll_out(self, device_class: str, measurement: Measurement) -> list[TimelineEvent]:
        """Roll the chosen (version, backend, precision) out to the class with the gates; event
        times are seconds from the rollout's start."""
        ...


@dataclass
class LoopBudget:
    max_rounds: int = 3
    max_trainer_seconds: float = 3600.0
    min_rounds: int = 0  # candidate rounds to run even when every goal is met after fewer


@dataclass
class LoopState:
    record: LoopRecord
    candidates: dict[str, Candidate] = field(default_factory=dict)
    tried: set[CandidateRequest] = field(default_factory=set)
    students: dict[str, str] = field(default_factory=dict)
    trainer_seconds: float = 0.0


def run_loop(
    trainer: TrainerPort,
    fleet: FleetPort,
    goals: dict[str, ClassGoal],
    ladders: Ladders,
    budget: LoopBudget,
    record: LoopRecord,
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, Choice]:
    """Run rounds until every class meets its goal or the budget ends; then roll out the choices."""
    t0 = time.monotonic()
    state = LoopState(record=record)
    classes = fleet.classes()
    unknown = sorted(set(goals) - set(classes))
    if unknown:
        raise ValueError(
            f"goals name device classes with no device: {unknown}; classes present: {sorted(classes)}"
        )

    name_of = getattr(fleet, "display_name", lambda device_id: device_id)

    def measure_everywhere(candidate: Candidate, round_no: int) -> None:
        for device_class in sorted(goals):
            canary = classes[device_class][0]
            progress(
                f"round {round_no}: {device_class} canary {name_of(canary)} measures {candidate.version}"
            )
            for m in fleet.measure(canary, candidate.version):
                record.measurements.append(m)
                record.timeline.append(
                    TimelineEvent(
                        time.monotonic() - t0,
                        device_class,
                        name_of(canary),
                        "benchmarked",
                        m.model_version,
                        f"{m.backend}/{m.precision}: {m.fps:.1f} img/s, {m.accuracy:.2f}",
                    )
                )

    def add(candidate: Candidate) -> None:
        candidate.version = fleet.publish(candidate)
        state.candidates[candidate.version] = candidate
        record.lineage.append(
            LineageNode(
                candidate.version, candidate.parent, candidate.action, candidate.detail, candidate.backbone
            )
        )

    progress("round 0: training the baseline")
    started = time.monotonic()
    base = trainer.baseline()
    state.trainer_seconds += time.monotonic() - started
    add(base)
    measure_everywhere(base, 0)
    choices = {c: choose(c, record.measurements, g, base.version) for c, g in goals.items()}
    record.round_log.append(_round_entry(0, [base.version], choices))
    record.rounds = 0

    for round_no in range(1, budget.max_rounds + 1):
        if state.trainer_seconds >= budget.max_trainer_seconds:
            progress(f"trainer budget spent ({state.trainer_seconds:.0f}s); stopping")
            break
        requests = plan_next_round(
            choices, base.version, state.tried, ladders, state.students, explore=round_no <= budget.min_rounds
        )
        if not requests:
            progress(
                "every class meets its goal"
                if all(c.meets_goal for c in choices.values())
                else "ladders spent"
            )
            break
        made: list[str] = []
        for req in requests:
            state.tried.add(req)
            parent = state.candidates[req.parent_version]
            progress(f"round {round_no}: training candidate: {req.label}")
            started = time.monotonic()
            try:
                cand = trainer.make(req, parent)
            except Exception as exc:  # a failed candidate is recorded, the loop goes on
                log.exception("candidate %s failed", req.label)
                record.round_log.append({"round": round_no, "failed": req.label, "error": str(exc)})
                continue
            finally:
                state.trainer_seconds += time.monotonic() - started
            add(cand)
            if req.kind == "distill":
                state.students[req.student_backbone] = cand.version
            measure_everywhere(cand, round_no)
            made.append(cand.version)
        choices = {c: choose(c, record.measurements, g, base.version) for c, g in goals.items()}
        record.round_log.append(_round_entry(round_no, made, choices))
        record.rounds = round_no

    for device_class, choice in sorted(choices.items()):
        # what the chosen model sustains as live streams, for the report, where no goal measured it
        if choice.chosen is None or choice.chosen.stream_capacity is not None:
            continue
        canary = classes[device_class][0]
        progress(f"{device_class}: stream capacity of {choice.chosen.model_version} on {name_of(canary)}")
        measured = fleet.stream_capacity(canary, choice.chosen)
        if measured is not None:
            choice.chosen = measured
            record.timeline.append(
                TimelineEvent(time.monotonic() - t0, device_class, name_of(canary), "stream_capacity",
                              measured.model_version,
                              f"{measured.stream_capacity} streams at {measured.stream_fps:g} FPS"))  # fmt: skip

    for device_class, choice in sorted(choices.items()):
        if choice.chosen is None:
            continue
        progress(f"rolling out {choice.chosen.model_version} ({choice.chosen.precision}) to {device_class}")
        started_at = time.monotonic() - t0
        for event in fleet.roll_out(device_class, choice.chosen):
            event.t += started_at  # roll_out times its events from the rollout's start
            record.timeline.append(event)
    record.classes = [summarize_choice(choices[c], goals[c].model_dump()) for c in sorted(choices)]
    return choices


def _round_entry(round_no: int, versions: list[str], choices: dict[str, Choice]) -> dict:
    return {
        "round": round_no,
        "candidates": versions,
        "choice": {
            c: {
                "version": ch.chosen.model_version if ch.chosen else None,
                "precision": ch.chosen.precision if ch.chosen else None,
                "meets_goal": ch.meets_goal,
                "reason": ch.reason,
            }
            for c, ch in choices.items()
        },
    }
