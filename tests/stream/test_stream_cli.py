"""``edgeloop agent stream -e PIPELINE.yaml key=value ...`` as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format
from stream_testkit import read_jsonl

from protos import fleet_pb2

ROOT = Path(__file__).resolve().parents[2]


def _stream(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeloop.cli", "agent", "stream", "-e", "agent/specs/pipeline.yaml",
           "--agent-dir", str(tmp_path / "agent"), "--threads", "1", *overrides]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})  # fmt: skip


def test_runs_a_file_to_its_end(clip, detector, tmp_path: Path) -> None:
    video, gt = clip
    out = tmp_path / "events.jsonl"
    run = _stream(tmp_path, f"sources.0.uri={video}", f"model.path={detector}", f"sinks.jsonl.path={out}",
                  "--stats-json", str(tmp_path / "stats.json"))  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert len(read_jsonl(out)) == len(gt["frames"])
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["sources"][0]["processed"] == len(gt["frames"]) and stats["model_version"] == "lanes:1"


def test_refuses_an_unknown_key_and_names_a_failed_source(clip, detector, tmp_path: Path) -> None:
    run = _stream(tmp_path, "batching.max_bach=4")
    assert run.returncode == 1 and "unknown key 'batching.max_bach'" in run.stderr
    video, _ = clip
    run = _stream(tmp_path, f"sources.0.uri={video}", "sources.1.id=gone", f"sources.1.uri={tmp_path}/gone.mp4",
                  f"model.path={detector}")  # fmt: skip
    assert run.returncode == 1 and "error: source gone: file not found" in run.stderr


def test_bench_stream_scenario_reports_capacity(clip, detector, tmp_path: Path) -> None:
    video, _ = clip
    cmd = [sys.executable, "-m", "edgeloop.cli", "agent", "bench", str(detector), "--scenario", "singlestream",
           "--duration-ms", "300", "--threads", "1", "--cache-dir", str(tmp_path / "engines"),
           "--stream-clip", str(video), "--streams", "1,2", "--stream-duration", "2",
           "--json", str(tmp_path / "bench.json")]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "HOME": str(tmp_path)})  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert "stream scenario (15 FPS live per stream): capacity" in run.stdout
    # the JSON is the fleet.Report the device would send: parsed back, the stream fields are there
    report = json_format.ParseDict(json.loads((tmp_path / "bench.json").read_text()), fleet_pb2.Report())
    steps = [s for s in report.scenarios if s.scenario == "stream"]
    assert report.stream_fps == 15 and 1 <= len(steps) <= 2 and steps[0].streams == 1
    # the capacity is what the steps measured: the most streams among those that met the rate
    assert report.stream_capacity == max([s.streams for s in steps if s.valid], default=0)
    for s in steps:
        assert s.valid == (s.min_stream_fps >= 0.95 * 15) and s.stream_fps == 15
        assert s.throughput_fps > 0 and s.latency_p99_ms >= s.latency_p50_ms > 0
    assert [s.scenario for s in report.scenarios][0] == "singlestream"  # LoadGen's ran first
