"""One loop on a running controller: the trainer port, the fleet port, the rounds and the report.

The demo and loops started over REST differ only in where their settings come from; both call
``run_on_controller``, so the wiring between the ports exists once.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from controller.context import ControllerContext
from controller.loop.engine import LoopBudget, run_loop
from controller.loop.fleet_adapter import ControllerFleet, FleetSettings, with_stream_goals
from controller.loop.goals import ClassGoal
from controller.loop.planner import Ladders
from controller.loop.record import LoopRecord
from controller.loop.report import render_report
from controller.loop.selection import Choice
from controller.loop.trainer_adapter import SpecTrainer, TrainerSettings


def run_on_controller(
    ctx: ControllerContext,
    trainer: TrainerSettings,
    fleet: FleetSettings,
    goals: dict[str, ClassGoal],
    ladders: Ladders,
    budget: LoopBudget,
    record: LoopRecord,
    report_dir: Path,
    *,
    round_id: str,
    progress: Callable[[str], None] = lambda msg: None,
    before_report: Callable[[LoopRecord, Path], None] | None = None,
) -> tuple[dict[str, Choice], Path]:
    """Run the loop, keep what devices could not measure, write the report; returns (choices,
    index.html). ``before_report(record, report_dir)`` may add to the record (the demo's frames)."""
    port = ControllerFleet(ctx, with_stream_goals(fleet, goals), round_id=round_id)
    choices = run_loop(SpecTrainer(trainer), port, goals, ladders, budget, record, progress=progress)
    record.failures = list(port.failures)
    if before_report is not None:
        before_report(record, report_dir)
    return choices, render_report(record, report_dir)
