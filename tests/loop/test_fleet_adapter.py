"""The loop's fleet port: what a device's capability list offers, and which reports count."""

from __future__ import annotations

import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))

from controller.inprocess import InProcessAPI
from controller.loop.fleet_adapter import (
    FleetSettings,
    measurement_from_report,
    precisions_of,
    with_stream_goals,
)
from controller.loop.goals import GoalError, parse_goals
from protos import fleet_pb2


def _report(**kw):
    base = dict(
        errors=[], fps=250.0, accuracy=91.5, model_version="pcb:a", backend="onnxruntime",
        precision="int8", latency_p90_ms=3.2, peak_memory_bytes=64_000_000, device_id="d1",
        stream_capacity=None, stream_fps=None,
    )  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_precisions_follow_available_capabilities_in_a_stable_order() -> None:
    caps = [
        {"backend": "onnxruntime", "precision": "int8", "device": "cpu", "available": True},
        {"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "available": True},
        {
            "backend": "tensorrt",
            "precision": "fp16",
            "device": "gpu:0",
            "available": False,
            "reason": "no GPU",
        },
    ]
    assert precisions_of(caps) == ["fp32", "int8"]
    assert precisions_of([]) == ["fp32"]


def test_a_report_with_errors_or_no_accuracy_is_not_a_measurement() -> None:
    m = measurement_from_report(_report(), "cpu-1t")
    assert (m.device_class, m.precision, m.fps, m.accuracy, m.memory_mb) == (
        "cpu-1t",
        "int8",
        250.0,
        91.5,
        64.0,
    )
    assert measurement_from_report(_report(errors=["build: calibration failed"]), "cpu-1t") is None
    assert measurement_from_report(_report(accuracy=None), "cpu-1t") is None
    assert measurement_from_report(_report(fps=None), "cpu-1t") is None
    assert m.stream_capacity is None  # the stream scenario did not run
    m = measurement_from_report(_report(stream_capacity=4, stream_fps=15.0), "jetson")
    assert (m.stream_capacity, m.stream_fps) == (4, 15.0)
    assert measurement_from_report(_report(stream_capacity=0, stream_fps=15.0), "jetson").stream_capacity == 0


def test_stream_goals_make_every_benchmark_run_the_stream_scenario_and_need_a_clip() -> None:
    plain = FleetSettings(evaluation_artifact_id="e")
    speed = parse_goals({"classes": {"cpu-1t": {"min_fps": 10}}})
    assert with_stream_goals(plain, speed) is plain  # no stream goal: only the chosen models run it
    streams = parse_goals(
        {"classes": {"cpu-1t": {"min_fps": 10}, "jetson": {"min_streams": 6, "stream_fps": 15}}}
    )
    with pytest.raises(GoalError, match=r"goals\.classes\.jetson\.min_streams: .*needs a reference clip"):
        with_stream_goals(plain, streams)
    s = with_stream_goals(FleetSettings(evaluation_artifact_id="e", stream_clip_artifact_id="clip"), streams)
    assert s.stream_every_benchmark and s.stream_counts == (1, 2, 4, 6, 8)  # the goal's count is tried


def test_a_loop_with_a_stream_goal_measures_every_candidate_and_chooses_by_stream_capacity(
    tmp_path: Path,
) -> None:
    """The loop on a real controller, over real gRPC, with a scripted device (the controller tests'
    stand-in for a device's work): every benchmark command carries the stream scenario and the
    clip, the capacities come back in the reports, and the class gets the most accurate model
    that keeps 4 streams at 15 FPS."""
    from ctl_helpers import ScriptedExecutor, make_controller, manifest_json, start_agent, write_onnx

    from controller.loop.engine import Candidate, LoopBudget, run_loop
    from controller.loop.fleet_adapter import ControllerFleet
    from controller.loop.planner import Ladders
    from controller.loop.record import LoopRecord

    @dataclass
    class StreamingDevice(ScriptedExecutor):
        capacity: dict[str, int] = field(default_factory=dict)
        benchmarks: list[fleet_pb2.Benchmark] = field(default_factory=list)

        def benchmark(self, *, command: fleet_pb2.Benchmark, **kw) -> list[fleet_pb2.Report]:
            self.benchmarks.append(command)
            reports = super().benchmark(command=command, **kw)
            if "stream" in command.scenarios:
                for r in reports:
                    r.stream_capacity, r.stream_fps = self.capacity[r.model_version], 15.0
            return reports

    versions = {"t:base": (90.0, 100.0, 1), "t:p50": (88.0, 300.0, 4), "t:p70": (80.0, 600.0, 8)}
    artifacts = {}
    for v in versions:
        folder = tmp_path / "models" / v.replace(":", "-")
        write_onnx(folder / "model.onnx", tag=v)
        (folder / "manifest.json").write_text(manifest_json(v), encoding="utf-8")
        artifacts[v] = folder

    class Trainer:  # the candidates exist already; the loop only publishes and measures them
        def baseline(self) -> Candidate:
            return Candidate("t:base", artifacts["t:base"], "", "train")

        def make(self, request, parent: Candidate) -> Candidate:  # noqa: ANN001
            v = f"t:p{round(request.prune_ratio * 100)}"
            return Candidate(v, artifacts[v], parent.version, "prune")

    for name in ("eval", "clip"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "x.bin").write_bytes(b"scripted device: not read")
        with tarfile.open(tmp_path / f"{name}.tar", "w") as tar:
            tar.add(tmp_path / name, arcname=name)
    ctl = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'controller.db'}")
    device = StreamingDevice(scores={v: (a, f) for v, (a, f, _) in versions.items()},
                             capacity={v: c for v, (_, _, c) in versions.items()})  # fmt: skip
    agent = start_agent(ctl.grpc_target, tmp_path / "agent", "test-enrollment-token", name="edge-1",
                        hardware_class="edge", executor=device)  # fmt: skip
    try:
        api = InProcessAPI(ctl.ctx)
        eval_id, clip_id = (api.import_shard(tmp_path / f"{n}.tar").id for n in ("eval", "clip"))
        goals = parse_goals(
            {"classes": {"edge": {"min_streams": 4, "stream_fps": 15, "max_accuracy_drop": 5}}}
        )
        settings = FleetSettings(evaluation_artifact_id=eval_id, stream_clip_artifact_id=clip_id, stream_counts=(1, 2),
                                 stream_step_s=1.0, report_timeout_s=60, rollout_waves=1)  # fmt: skip
        fleet = ControllerFleet(ctl.ctx, with_stream_goals(settings, goals))
        record = LoopRecord("classification", "top-1", "", 0)
        choices = run_loop(Trainer(), fleet, goals, Ladders(prune_ratios=[0.5, 0.7], students=[], per_round=2),
                           LoopBudget(max_rounds=2, min_rounds=2), record)  # fmt: skip
        assert {b.artifact.model_version for b in device.benchmarks} == set(versions)
        for b in device.benchmarks:
            assert "stream" in b.scenarios and b.stream_clip.artifact_id == clip_id
            assert list(b.stream_counts) == [1, 2, 4] and b.stream_step_s == 1.0  # the goal's count is tried
        choice = choices["edge"]
        assert (
            choice.meets_goal
            and choice.chosen.model_version == "t:p50"
            and choice.chosen.stream_capacity == 4
        )
        assert record.classes[0].chosen_stream_capacity == 4
        assert not [
            e for e in record.timeline if e.event == "stream_capacity"
        ]  # measured already: no extra run
    finally:
        agent.stop()
        ctl.stop()
