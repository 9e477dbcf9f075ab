"""The HTML report renders every section from a record, and round-trips through record.json."""

from __future__ import annotations

from pathlib import Path

from controller.loop.goals import parse_goals
from controller.loop.record import LineageNode, LoopRecord, TimelineEvent, summarize_choice
from controller.loop.report import render_report
from controller.loop.selection import Measurement, choose


def test_report_has_every_section_and_plots(tmp_path: Path) -> None:
    ms = [
        Measurement("cpu-1t", "base", "onnxruntime", "fp32", 92.0, 100.0, 11.0),
        Measurement("cpu-1t", "base", "onnxruntime", "int8", 91.5, 260.0, 4.0),
        Measurement("cpu-1t", "student", "onnxruntime", "int8", 91.4, 450.0, 2.5),
    ]
    goals = parse_goals({"classes": {"cpu-1t": {"min_fps": 400}}})
    choice = choose("cpu-1t", ms, goals["cpu-1t"], "base")
    record = LoopRecord(
        task="classification",
        metric_name="top-1 accuracy (%)",
        emulation_note="emulated device classes on one host",
        rounds=2,
        measurements=ms,
        classes=[summarize_choice(choice, goals["cpu-1t"].model_dump())],
        timeline=[TimelineEvent(1.0, "cpu-1t", "dev1", "switched", "student")],
        lineage=[LineageNode("base", "", "train"), LineageNode("student", "base", "distill", "teacher base")],
    )
    index = render_report(record, tmp_path)
    text = index.read_text()
    for section in ("accuracy-vs-fps", "rollout-timeline", "lineage", "speedup", "emulation"):
        assert f"id='{section}'" in text
    assert (tmp_path / "accuracy_vs_fps_cpu-1t.png").stat().st_size > 5000
    assert (tmp_path / "rollout_timeline.png").stat().st_size > 5000
    assert "4.50x" in text and "base</b> (train) → <b>student</b>" in text
    again = LoopRecord.load(tmp_path / "record.json")
    assert again.classes[0].chosen_version == "student" and again.measurements == ms
