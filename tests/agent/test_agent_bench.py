"""LoadGen scenarios on a tiny model (short runs), the report, and the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from agent_testkit import make_artifact

from agent.bench import BenchConfig, benchmark, render_table, report_to_dict
from agent.config import AgentSettings

ROOT = Path(__file__).resolve().parents[2]
FAST = BenchConfig(duration_ms=200, min_queries=16, samples=8, server_search_steps=3, batch_size=4)


@pytest.fixture
def settings(tmp_path) -> AgentSettings:
    return AgentSettings(agent_dir=tmp_path / "agent", threads=1)


def test_every_scenario_and_accuracy(model_path, images, settings, profile) -> None:
    stages = []
    report = benchmark(model_path, precision="int8", calib_dir=images, eval_dir=images, config=FAST,
                       settings=settings, profile=profile, progress=lambda s, f: stages.append(s))  # fmt: skip
    assert not [e for e in report.errors if not e.startswith("warning")], report.errors
    assert report.accuracy["top1"] == 1.0
    by = {s.scenario: s for s in report.scenarios}
    assert set(by) == {"singlestream", "offline", "server"}
    single, offline, server = by["singlestream"], by["offline"], by["server"]
    assert (
        single.batch_size == 1 and 0 < single.latency_p50_ms <= single.latency_p90_ms <= single.latency_p99_ms
    )
    assert single.valid and offline.valid and offline.throughput_fps > 0 and offline.batch_size == 4
    assert server.target_latency_ms > 0 and server.throughput_fps > 0
    assert server.valid == (server.latency_p99_ms <= server.target_latency_ms)
    assert report.build_time_s > 0 and report.calibration_time_s > 0
    assert (
        report.peak_memory_bytes > 0
        and report.engine_key
        and report.hardware_fingerprint == profile.fingerprint
    )
    assert {"build", "accuracy", "singlestream", "offline", "server"} <= set(stages)
    table = render_table(report)
    assert "singlestream" in table and "top1" in table
    assert report_to_dict(report)["scenarios"][0]["scenario"] == "singlestream"


def test_static_batch_model_and_no_eval_data(artifacts, settings, profile) -> None:
    path = make_artifact(artifacts, "static2", batch=2)
    config = BenchConfig(scenarios=("offline", "server"), duration_ms=200, min_queries=16, samples=8,
                         server_search_steps=2, server_latency_ms=50.0)  # fmt: skip
    report = benchmark(path, config=config, settings=settings, profile=profile)
    assert [s.scenario for s in report.scenarios] == ["offline", "server"]
    assert report.scenarios[0].batch_size == 2 and not report.accuracy


def test_build_failure_is_a_report_not_an_exception(model_path, settings, profile) -> None:
    report = benchmark(model_path, precision="int8", config=FAST, settings=settings, profile=profile)
    assert not report.scenarios and any("build:" in e and "calib" in e for e in report.errors)
    report = benchmark(model_path, backend="tensorrt", config=FAST, settings=settings, profile=profile)
    assert any("tensorrt" in e.lower() for e in report.errors)


def test_cli_bench_writes_json(model_path, images, tmp_path) -> None:
    out = tmp_path / "report.json"
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(tmp_path / "agent"), EDGELOOP_AGENT_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "agent", "bench", str(model_path), "--precision", "fp32",
         "--eval", str(images), "--scenario", "singlestream", "--scenario", "offline",
         "--duration-ms", "200", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())
    assert [s["scenario"] for s in data["scenarios"]] == ["singlestream", "offline"]
    assert data["accuracy"]["top1"] == 1.0
    assert "img/s" in proc.stdout


def test_cli_without_manifest_warns(tmp_path) -> None:
    from agent_testkit import colour_classifier

    path = colour_classifier(tmp_path / "foreign.onnx")
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(tmp_path / "agent"))
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "agent", "bench", str(path), "--scenario", "singlestream",
         "--duration-ms", "100"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "no manifest given" in proc.stdout + proc.stderr
