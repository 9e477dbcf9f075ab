"""`edgeloop demo --quick` end to end, as CI runs it: real trainer runs, a real controller
(SQLite, a local MQTT broker), three real agent processes of emulated classes, rollouts, and the
report. Every assertion reads what the command wrote; nothing is mocked."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from controller.demo.cli import run_demo
from controller.demo.presets import QUICK
from controller.loop.goals import GoalError


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_report_has_every_part(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    report = out / "report"
    text = (report / "index.html").read_text(encoding="utf-8")
    for section in ("emulation", "speedup", "accuracy-vs-fps", "rollout-timeline", "lineage"):
        assert f"id='{section}'" in text, section
    assert "Emulated device classes on one host" in text
    record = json.loads((report / "record.json").read_text(encoding="utf-8"))
    classes = {c["device_class"] for c in record["classes"]}
    assert classes == {"cpu-2t", "cpu-1t", "cpu-1t-throttled"}
    for c in classes:  # one accuracy-vs-FPS plot per class, linked from the page
        png = report / f"accuracy_vs_fps_{c}.png"
        assert png.stat().st_size > 5000 and png.name in text
    assert (report / "rollout_timeline.png").stat().st_size > 5000


def test_report_shows_each_class_chosen_stream_capacity_and_annotated_frames(
    quick_demo: tuple[Path, str],
) -> None:
    """The stream scenario ran on each class's canary with the chosen model (the quick goals set no
    stream goal, so only the choice is measured), and an agent process annotated the clip."""
    out, stdout = quick_demo
    report = out / "report"
    record = json.loads((report / "record.json").read_text(encoding="utf-8"))
    text = (report / "index.html").read_text(encoding="utf-8")
    assert "id='streams'" in text and "id='annotated-frames'" in text
    for c in record["classes"]:
        assert c["chosen_stream_fps"] == QUICK.clip_fps and 0 <= c["chosen_stream_capacity"] <= 2, c
        n = c["chosen_stream_capacity"]
        kept = f"{n} at {QUICK.clip_fps:g} FPS each" if n else f"none at {QUICK.clip_fps:g} FPS"
        assert f"<td class='streams'>{kept}" in text
    runs = [e for e in record["timeline"] if e["event"] == "stream_capacity"]
    assert {e["device_class"] for e in runs} == {c["device_class"] for c in record["classes"]}
    assert (
        len(record["stream_frames"]) == 3
        and record["classes"][0]["chosen_version"] in record["stream_frames_note"]
    )
    for name in record["stream_frames"]:  # real JPEGs of the clip's size, linked from the page
        data = (report / name).read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and len(data) > 2000 and f"src='{name}'" in text
    assert (report / "annotated.mp4").stat().st_size > 10000 and "href='annotated.mp4'" in text
    assert "streams" in stdout  # the summary table's column


def test_loop_ran_two_rounds_and_judged_only_device_measurements(quick_demo: tuple[Path, str]) -> None:
    out, _ = quick_demo
    record = json.loads((out / "report" / "record.json").read_text(encoding="utf-8"))
    assert record["rounds"] >= 2
    versions = {n["version"] for n in record["lineage"]}
    assert len(versions) >= 4  # the baseline and at least three candidates
    measured = {(m["device_class"], m["model_version"]) for m in record["measurements"]}
    for c in record["classes"]:
        # every class measured every candidate itself, and its choice is one of its measurements
        assert {(c["device_class"], v) for v in versions} <= measured
        assert (c["device_class"], c["chosen_version"]) in measured
        assert c["reason"]
    base = record["lineage"][0]["version"]
    base_fps = {
        m["device_class"]: m["fps"]
        for m in record["measurements"]
        if m["model_version"] == base and m["precision"] == "fp32"
    }
    # every class measured the baseline itself; how fast each was is a benchmark's business, not a
    # test's (on a loaded host the emulated classes' speeds overlap), so only the emulation is checked
    assert set(base_fps) == {"cpu-2t", "cpu-1t", "cpu-1t-throttled"} and min(base_fps.values()) > 0, base_fps
    note = record["emulation_note"]
    assert (
        f"cpu-2t: {min(2, os.cpu_count() or 1)} thread(s)" in note
        and "cpu-1t-throttled: 1 thread(s)" in note
        and "throttled to 50%" in note
    )


def test_choices_were_rolled_out_with_gates_and_lineage_is_shown(quick_demo: tuple[Path, str]) -> None:
    out, stdout = quick_demo
    record = json.loads((out / "report" / "record.json").read_text(encoding="utf-8"))
    text = (out / "report" / "index.html").read_text(encoding="utf-8")
    done = [e for e in record["timeline"] if e["event"].startswith("rollout_")]
    assert {e["device_class"] for e in done if e["event"] == "rollout_succeeded"} == {
        c["device_class"] for c in record["classes"] if c["chosen_version"]
    }
    deployed = [e for e in record["timeline"] if e["event"] == "succeeded"]
    assert deployed and all("gate passed" in e["detail"] for e in deployed)
    for c in record["classes"]:
        assert re.search(rf"{re.escape(c['device_class'])}: .*<b>{re.escape(c['chosen_version'])}</b>", text)
    assert "what each device class runs" in stdout  # the terminal summary table
    assert "round 2" in stdout  # progress lines


def test_goals_naming_a_missing_class_are_refused_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"goals name classes the demo does not start: \['jetson-nano'\]"):
        run_demo(QUICK, tmp_path, goals_data={"classes": {"jetson-nano": {"min_fps": 30}}})
    assert not (tmp_path / "data").exists()
    with pytest.raises(GoalError, match=r"goals\.classes\.cpu-1t\.min_fsp: unknown key; allowed: "):
        run_demo(QUICK, tmp_path, goals_data={"classes": {"cpu-1t": {"min_fsp": 30}}})


def test_cli_names_the_bad_key_of_a_goals_file(tmp_path: Path) -> None:
    goals = tmp_path / "goals.yaml"
    goals.write_text("classes:\n  cpu-1t: {max_latency: 3}\n", encoding="utf-8")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "edgeloop.cli",
            "demo",
            "--quick",
            "--out",
            str(tmp_path / "o"),
            "--goals",
            str(goals),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "goals.classes.cpu-1t.max_latency: unknown key; allowed:" in proc.stdout
    assert not (tmp_path / "o").exists()


def test_detection_quick_demo_runs_the_same_loop_with_map(tmp_path: Path) -> None:
    """`edgeloop demo --task detection --quick`: RT-DETR baseline, distilled students, each measured
    on every class with on-device mAP (INT8 calibrated on the device), same report."""
    out = tmp_path / "det"
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "demo", "--task", "detection", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    record = json.loads((out / "report" / "record.json").read_text(encoding="utf-8"))
    assert record["task"] == "detection" and record["metric_name"].startswith("mAP")
    assert record["rounds"] >= 2
    actions = [n["action"] for n in record["lineage"]]
    assert actions[0] == "train" and actions.count("distill") >= 2
    precisions = {m["precision"] for m in record["measurements"]}
    assert {"fp32", "int8"} <= precisions  # INT8 engines built and calibrated on the devices
    assert all(0.0 <= m["accuracy"] <= 100.0 for m in record["measurements"])
    text = (out / "report" / "index.html").read_text(encoding="utf-8")
    for section in ("emulation", "speedup", "accuracy-vs-fps", "rollout-timeline", "lineage"):
        assert f"id='{section}'" in text
    assert {e["device_class"] for e in record["timeline"] if e["event"] == "rollout_succeeded"} == {
        "cpu-2t",
        "cpu-1t",
        "cpu-1t-throttled",
    }
