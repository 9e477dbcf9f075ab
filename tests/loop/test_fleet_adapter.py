"""The loop's fleet port: what a device's capability list offers, and which reports count."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from controller.loop.fleet_adapter import (
    FleetSettings,
    measurement_from_report,
    precisions_of,
    with_stream_goals,
)
from controller.loop.goals import GoalError, parse_goals


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
