"""A device's pipelines reach the controller: the agent runtime's telemetry metrics carry its
pipelines (FPS, view link), the controller's ingest keeps the latest per device, and the API
(``/devices/{id}/pipelines``) and the dashboard summary show them. Real broker, real controller,
real pipeline; the device is enrolled over gRPC first (telemetry of unknown ids is dropped)."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

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
    finally:
        if runtime is not None:
            runtime.close()
        ctl.stop()
