"""The HTML report renders every section from a record, and round-trips through record.json."""

from __future__ import annotations

from pathlib import Path

from controller.loop.goals import parse_goals
from controller.loop.record import LineageNode, LoopRecord, TimelineEvent, summarize_choice
from controller.loop.report import accuracy_axis, render_report, timeline_rows, timeline_style
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


def test_accuracy_axis_follows_the_data_and_marks_a_far_floor_at_the_edge() -> None:
    # quick-demo goals allow a 100-point drop: the floor (-83) must not squash the points
    far = accuracy_axis([16.67, 16.67, 11.11], floor=16.67 - 100)
    assert 10.0 < far.low < 11.11 and 16.67 < far.high < 18.0
    assert not far.floor_shown and far.floor_side == "below"
    near = accuracy_axis([91.4, 92.0, 91.5], floor=91.0)
    assert near.floor_shown and near.low < 91.0 < near.high
    above = accuracy_axis([50.0, 51.0], floor=90.0)  # every point misses the floor
    assert not above.floor_shown and above.floor_side == "above" and above.high < 90.0
    assert accuracy_axis([70.0], floor=None).low < 70.0 < accuracy_axis([70.0], floor=None).high


def test_timeline_rows_put_each_class_rollout_above_its_devices_and_every_event_has_a_legend() -> None:
    record = LoopRecord(task="classification", metric_name="top-1", emulation_note="", rounds=1)
    record.timeline = [
        TimelineEvent(1.0, "cpu-2t", "cpu-2t-1", "benchmarked"),
        TimelineEvent(2.0, "cpu-1t", "cpu-1t-1", "benchmarked"),
        TimelineEvent(3.0, "cpu-1t", "", "rollout_started"),
        TimelineEvent(4.0, "cpu-1t", "cpu-1t-1", "succeeded"),
        TimelineEvent(5.0, "cpu-1t", "", "rollout_succeeded"),
        TimelineEvent(6.0, "cpu-2t", "", "rollout_aborted"),
    ]
    top_down = list(reversed(timeline_rows(record)))
    assert top_down == [("cpu-1t", ""), ("cpu-1t", "cpu-1t-1"), ("cpu-2t", ""), ("cpu-2t", "cpu-2t-1")]
    labels = {timeline_style(e.event)[2] for e in record.timeline}
    assert {
        "class rollout started",
        "class rollout succeeded",
        "class rollout aborted / rolled back",
    } <= labels
    assert timeline_style("rollout_paused")[2] == "rollout paused"  # an unknown event still gets a label


def test_report_shows_each_class_chosen_stream_capacity_and_the_annotated_frames(tmp_path: Path) -> None:
    from PIL import Image

    ms = [
        Measurement("jetson", "base", "tensorrt", "fp16", 60.0, 300.0, 3.0, stream_capacity=2, stream_fps=15),
        Measurement(
            "jetson", "small", "tensorrt", "int8", 59.5, 900.0, 1.0, stream_capacity=8, stream_fps=15
        ),
        Measurement("cpu-1t", "base", "onnxruntime", "fp32", 60.0, 50.0, 20.0),
    ]
    goals = parse_goals(
        {"classes": {"jetson": {"min_streams": 4, "stream_fps": 15}, "cpu-1t": {"min_fps": 10}}}
    )
    classes = [
        summarize_choice(choose(c, ms, goals[c], "base"), goals[c].model_dump()) for c in sorted(goals)
    ]
    Image.new("RGB", (64, 36), (200, 30, 30)).save(tmp_path / "frame_0.jpg")
    record = LoopRecord(task="detection", metric_name="mAP", emulation_note="", rounds=1, measurements=ms,
                        classes=classes, stream_clip="conveyor.mp4", stream_frames=["frame_0.jpg"],
                        stream_frames_note="drawn by small on conveyor.mp4")  # fmt: skip
    text = render_report(record, tmp_path).read_text()
    assert "id='streams'" in text and "id='annotated-frames'" in text
    assert "<td class='streams'>8 at 15 FPS each</td><td>4 at 15 FPS</td>" in text  # jetson: small
    assert "<td class='streams'>not measured</td><td>none (reported only)</td>" in text  # cpu-1t
    assert "live copies of conveyor.mp4" in text and "<img class='frame' src='frame_0.jpg'" in text
    again = LoopRecord.load(tmp_path / "record.json")
    assert again.classes[1].chosen_stream_capacity == 8 and again.stream_frames == ["frame_0.jpg"]
    # a record without streams (an older record.json, or a loop with no clip) has no such section
    assert (
        "id='streams'"
        not in render_report(LoopRecord("classification", "top-1", "", 0), tmp_path / "b").read_text()
    )
