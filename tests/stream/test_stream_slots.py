"""A pipeline on ``model.path: active`` follows the agent's slots: a deploy that switches and a
rollback while a live source streams change the model of the next batch, without reopening the
source or losing its frame count; the agent runtime keeps its pipelines across a restart."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from stream_testkit import detector_artifact, read_jsonl

from agent.config import AgentSettings
from agent.runtime import AgentRuntime
from agent.slots import ModelSlots
from agent.stream.spec import load_pipeline_spec


def _wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_switch_and_rollback_while_streaming(make_pipeline, clip, detector, profile, cache, tmp_path) -> None:
    video, _ = clip
    other = detector_artifact(tmp_path / "lanes2", version="lanes:2", threshold=100 / 255)
    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    assert slots.deploy(detector).ok
    out = tmp_path / "events.jsonl"
    p = make_pipeline("sources.0.id=cam", f"sources.0.uri={video}", "sources.0.live=true", "sources.0.pace=true",
                      "sources.0.loop=true", f"sinks.jsonl.path={out}", slots=slots)  # fmt: skip
    source = p.sources["cam"]

    def versions() -> list[str]:
        return [e["model_version"] for e in read_jsonl(out)]

    _wait_for(lambda: versions().count("lanes:1") >= 5)
    assert slots.deploy(other).ok  # builds, health-checks and switches while the pipeline runs
    _wait_for(lambda: versions().count("lanes:2") >= 5)
    slots.rollback(reason="test")
    _wait_for(lambda: versions()[-1] == "lanes:1" and versions().count("lanes:1") >= 10)
    p.stop()
    seq = versions()
    # one change to lanes:2 and one back: no batch mixes up which model it ran on
    changes = [(a, b) for a, b in zip(seq, seq[1:], strict=False) if a != b]
    assert changes == [("lanes:1", "lanes:2"), ("lanes:2", "lanes:1")]
    frames = [e["frame"] for e in read_jsonl(out)]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # one source, never reopened
    stats = p.stats()["sources"][0]
    assert stats["reconnects"] == 0 and stats["errors"] == 0
    assert p.sources["cam"] is source


def test_runtime_restores_its_pipelines_after_a_restart(clip, detector, tmp_path: Path) -> None:
    video, gt = clip
    settings = AgentSettings(agent_dir=tmp_path / "agent", serve_port=-1, http_port=0, threads=1)
    out = tmp_path / "events.jsonl"
    spec = load_pipeline_spec({"name": "belt", "sources": [{"id": "cam", "uri": str(video)}]},
                              [f"sinks.jsonl.path={out}"])  # fmt: skip
    with AgentRuntime(settings, deploy_bench=None) as runtime:
        assert runtime.slots.deploy(detector).ok
        runtime.streams.create(spec)
        assert runtime.streams.get("belt").wait(60)
        assert runtime.http_server is not None  # the agent's /metrics carries the pipeline's numbers
        page = (
            urllib.request.urlopen(f"http://127.0.0.1:{runtime.http_server.port}/metrics", timeout=10)
            .read()
            .decode()
        )
        assert (
            f'edgeloop_agent_stream_processed_frames_total{{pipeline="belt",source="cam"}} {len(gt["frames"])}.0'
            in page
        )
        assert 'edgeloop_agent_stream_latency_seconds{pipeline="belt",quantile="0.99",source="cam"}' in page
    assert (tmp_path / "agent" / "pipelines" / "belt.json").is_file()
    first = len(read_jsonl(out))
    assert first == len(gt["frames"])
    with AgentRuntime(settings, deploy_bench=None) as runtime:  # the restart: slots, then pipelines
        assert runtime.streams.names() == ["belt"]
        pipeline = runtime.streams.get("belt")
        assert pipeline.wait(60)
        assert pipeline.stats()["model_version"] == "lanes:1"
        runtime.streams.delete("belt")
    assert len(read_jsonl(out)) == 2 * first
    assert not (tmp_path / "agent" / "pipelines" / "belt.json").exists()
