"""A device's pipelines reach the controller: the agent runtime's telemetry metrics carry its
pipelines (FPS, view link), the controller's ingest keeps the latest per device, and the API
(``/devices/{id}/pipelines``) and the dashboard summary show them. Real broker, real controller,
real pipeline; the device is enrolled over gRPC first (telemetry of unknown ids is dropped)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "controller"))
from ctl_helpers import make_controller, minimal_hardware, trust, wait_until  # noqa: E402

from agent.config import AgentSettings  # noqa: E402
from agent.fleet.client import AgentIdentity, FleetClient  # noqa: E402
from agent.runtime import AgentRuntime  # noqa: E402
from agent.stream.spec import load_pipeline_spec  # noqa: E402

API = {"Authorization": "Bearer test-api-token"}


def test_pipelines_in_telemetry_reach_the_api_and_dashboard(
    clip, detector, tmp_path: Path, mqtt_broker
) -> None:
    video, _ = clip
    ctl = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'controller.db'}", http=True,
                          mqtt_url=mqtt_broker.url)  # fmt: skip
    runtime = None
    try:
        assert ctl.telemetry is not None and ctl.telemetry.connected.wait(10)
        client = FleetClient(ctl.grpc_target, tmp_path / "agent", AgentIdentity("cam-box", minimal_hardware("cpu-t")),
                             "test-enrollment-token", **trust(ctl))  # fmt: skip
        device_id = client.register().device_id
        client.close()
        settings = AgentSettings(agent_dir=tmp_path / "agent-rt", serve_port=-1, http_port=-1, threads=1,
                                 metrics_interval_s=0.5, mqtt_url=mqtt_broker.url)  # fmt: skip
        runtime = AgentRuntime(settings, deploy_bench=None)
        runtime.attach_telemetry(device_id)
        runtime.start()
        spec = load_pipeline_spec({"name": "belt", "sources": [{"id": "cam", "uri": str(video), "live": True,
                                                                "pace": True, "loop": True}]},
                                  [f"model.path={detector}", "sinks.mjpeg.port=0"])  # fmt: skip
        pipeline = runtime.streams.create(spec)
        base = f"http://127.0.0.1:{ctl.http_port}/api/v1"

        def reported() -> list:
            return httpx.get(f"{base}/devices/{device_id}/pipelines", headers=API, timeout=10).json()[
                "pipelines"
            ]

        wait_until(
            lambda: reported() and reported()[0]["fps"] > 0, 30, "the pipeline in the device's telemetry"
        )
        p = reported()[0]
        assert p["pipeline"] == "belt" and p["model_version"] == "lanes:1" and p["view"] == pipeline.view.url
        assert p["sources"][0]["source_id"] == "cam" and p["sources"][0]["state"] == "running"
        summary = httpx.get(f"{base}/dashboard", headers=API, timeout=10).json()
        assert summary["pipelines"][device_id][0]["pipeline"] == "belt"
        assert httpx.get(f"{base}/devices/nope/pipelines", headers=API, timeout=10).status_code == 404
        chromium = shutil.which("chromium") or shutil.which("chromium-browser")
        if chromium:  # the dashboard's device table: the pipeline, its FPS, the link to its view
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--window-size=1400,900",
                     "--virtual-time-budget=6000"]  # fmt: skip
            url = f"http://127.0.0.1:{ctl.http_port}/dashboard#token=test-api-token"
            dom = subprocess.run([chromium, *flags, "--dump-dom", url], capture_output=True, text=True,
                                 timeout=90, check=True).stdout  # fmt: skip
            assert 'data-pipeline="belt"' in dom and f'href="{pipeline.view.url}"' in dom, dom[-3000:]
            shot = tmp_path / "dashboard.png"
            subprocess.run(
                [chromium, *flags, f"--screenshot={shot}", url], capture_output=True, timeout=90, check=True
            )
            out = Path(__file__).resolve().parents[2] / "results"
            if out.is_dir():  # kept for a person to look at (never committed)
                shutil.copy(shot, out / "dashboard_pipelines.png")
    finally:
        if runtime is not None:
            runtime.close()
        ctl.stop()


def test_controller_configures_pipelines_on_a_device_and_a_group(clip, detector, tmp_path: Path) -> None:
    """REST -> gRPC command -> the agent's runtime (a real one, behind the real fleet client):
    create, add and remove a source while it runs, a spec the device refuses (named in the
    command), delete; and one pipeline for a tagged group."""
    from ctl_helpers import start_agent

    video, gt = clip
    ctl = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'controller.db'}", http=True)
    runtime = AgentRuntime(AgentSettings(agent_dir=tmp_path / "agent-rt", serve_port=-1, http_port=-1, threads=1),
                           deploy_bench=None).start()  # fmt: skip
    agent = start_agent(ctl.grpc_target, tmp_path / "agent", "test-enrollment-token", name="cam-box",
                        tags=["line-1"], executor=runtime)  # fmt: skip
    base = f"http://127.0.0.1:{ctl.http_port}/api/v1/devices"
    device = agent.device_id

    def done(response: httpx.Response) -> dict:
        assert response.status_code == 202, response.text
        cid = response.json()["id"]

        def final() -> dict | None:
            c = httpx.get(f"{base}/{device}/commands/{cid}", headers=API, timeout=10).json()
            return c if c["state"] in ("succeeded", "failed") else None

        wait_until(final, 60, f"command {cid}")
        return final() or {}

    out = tmp_path / "events.jsonl"
    spec = {"name": "belt", "sources": [{"id": "cam", "uri": str(video), "live": True, "pace": True, "loop": True}],
            "model": {"path": str(detector)}, "sinks": {"jsonl": {"path": str(out)}}}  # fmt: skip
    try:
        c = done(httpx.post(f"{base}/{device}/pipelines", json={"spec": spec}, headers=API, timeout=10))
        assert c["state"] == "succeeded" and c["kind"] == "pipeline", c
        assert runtime.streams.names() == ["belt"]
        c = done(httpx.post(f"{base}/{device}/pipelines/belt/sources", headers=API, timeout=10,
                            json={"source": {"id": "door", "uri": str(video)}}))  # fmt: skip
        assert c["state"] == "succeeded", c
        pipeline = runtime.streams.get("belt")
        wait_until(
            lambda: pipeline.metrics["door"].processed == len(gt["frames"]),
            60,
            "the added file source played",
        )
        assert pipeline.metrics["door"].state == "ended"
        c = done(httpx.delete(f"{base}/{device}/pipelines/belt/sources/door", headers=API, timeout=10))
        assert c["state"] == "succeeded" and sorted(pipeline.sources) == ["cam"]
        bad = {**spec, "name": "bad", "batching": {"max_bach": 4}}
        c = done(httpx.post(f"{base}/{device}/pipelines", json={"spec": bad}, headers=API, timeout=10))
        assert c["state"] == "failed" and "unknown key 'batching.max_bach'" in c["message"], c
        assert runtime.streams.names() == ["belt"]
        assert httpx.post(f"{base}/{device}/pipelines", json={"spec": {"sources": []}}, headers=API,
                          timeout=10).status_code == 422  # fmt: skip
        c = done(httpx.delete(f"{base}/{device}/pipelines/belt", headers=API, timeout=10))
        assert c["state"] == "succeeded" and runtime.streams.names() == []
        assert not (tmp_path / "agent-rt" / "pipelines" / "belt.json").exists()
        group = httpx.post(f"{base}/pipelines", headers=API, timeout=10,
                           json={"spec": {**spec, "name": "line"}, "tag": "line-1"})  # fmt: skip
        assert group.status_code == 202 and group.json()["count"] == 1, group.text
        wait_until(lambda: runtime.streams.names() == ["line"], 60, "the group's pipeline on the device")
        assert (
            httpx.post(f"{base}/pipelines", headers=API, timeout=10, json={"spec": spec}).status_code == 422
        )
    finally:
        agent.stop()
        runtime.close()
        ctl.stop()


def test_a_benchmark_command_measures_stream_capacity_and_the_controller_stores_it(
    clip, detector, tmp_path: Path
) -> None:
    """The fleet path of the stream scenario: the controller sends a benchmark command naming a
    clip shard, a real runtime plays it through its pipeline on the benchmark's engine, and the
    fleet.Report fields (stream_capacity, stream_fps, one ``stream`` ScenarioResult per step)
    arrive over gRPC and are stored with the device's other measurements."""
    import tarfile

    from ctl_helpers import start_agent

    from controller.inprocess import InProcessAPI

    video, _ = clip
    ctl = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'controller.db'}")
    runtime = AgentRuntime(AgentSettings(agent_dir=tmp_path / "agent-rt", serve_port=-1, http_port=-1, threads=1),
                           deploy_bench=None).start()  # fmt: skip
    agent = start_agent(ctl.grpc_target, tmp_path / "agent", "test-enrollment-token", name="cam-box",
                        executor=runtime)  # fmt: skip
    api = InProcessAPI(ctl.ctx)
    try:
        version = api.import_artifact_dir(detector.parent).version
        with tarfile.open(tmp_path / "clip.tar", "w") as tar:
            tar.add(video, arcname=f"clip/{video.name}")
        clip_id = api.import_shard(tmp_path / "clip.tar", name="conveyor").id
        body = {"model_version": version, "scenarios": ["singlestream", "stream"], "duration_ms": 300,
                "stream_clip_artifact_id": clip_id, "stream_counts": [1, 2], "stream_step_s": 1.0}  # fmt: skip
        command_id = api.send_benchmark(agent.device_id, body)
        (cmd,) = api.wait_for_commands([command_id], timeout_s=120)
        assert cmd.state.value == "succeeded", cmd.message
        (stored,) = api.wait_for_reports([command_id], timeout_s=30)
        assert not stored.errors, stored.errors
        steps = [s for s in stored.scenarios if s["scenario"] == "stream"]
        assert stored.stream_fps == 15 and [s["streams"] for s in steps][:1] == [1]
        assert stored.stream_capacity == max([s["streams"] for s in steps if s["valid"]], default=0)
        assert all(s["stream_fps"] == 15 and s["throughput_fps"] > 0 for s in steps)
        # the LoadGen figures are the engine's alone: the stream steps do not stand in for them
        single = next(s for s in stored.scenarios if s["scenario"] == "singlestream")
        assert stored.latency_p90_ms == single["latency_p90_ms"]
        # a stream scenario without a clip is refused before anything is sent
        with pytest.raises(ValueError, match="scenario 'stream' needs stream_clip_artifact_id"):
            api.send_benchmark(agent.device_id, {"model_version": version, "scenarios": ["stream"]})
    finally:
        agent.stop()
        runtime.close()
        ctl.stop()
