"""The dashboard in headless Chromium: the fleet, a rollout's progress and accuracy vs FPS per
device class, rendered from live API data (screenshot + DOM check)."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from ctl_helpers import ScriptedExecutor, make_controller, manifest_json, start_agent, write_onnx

from controller.models import TelemetryAggregate

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1400,1000",
    "--virtual-time-budget=8000",
]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_dashboard_renders_fleet_rollout_and_chart(tmp_path: Path, sqlite_url: str) -> None:
    ctl = make_controller(tmp_path / "data", sqlite_url, http=True)
    agents = []
    try:
        # tiny:3 is beaten by tiny:1 on both accuracy and FPS: plotted, but labelled only on hover
        scores = {"tiny:1": (80.0, 100.0), "tiny:2": (79.5, 180.0), "tiny:3": (70.0, 50.0)}
        for i, hw in enumerate(["cpu-1t", "cpu-4t"]):
            speed = 1 if hw == "cpu-1t" else 3
            s = {k: (a, f * speed) for k, (a, f) in scores.items()}
            agents.append(
                start_agent(
                    ctl.grpc_target,
                    tmp_path / f"a{i}",
                    "test-enrollment-token",
                    name=f"cam-{i}",
                    hardware_class=hw,
                    tags=["line-1"],
                    executor=ScriptedExecutor(scores=s),
                )
            )
        ctl.import_model(write_onnx(tmp_path / "m1.onnx", "v1"), manifest_json("tiny:1"))
        ctl.import_model(write_onnx(tmp_path / "m2.onnx", "v2"), manifest_json("tiny:2", parent="tiny:1"))
        ctl.import_model(write_onnx(tmp_path / "m3.onnx", "v3"), manifest_json("tiny:3", parent="tiny:1"))
        r = ctl.create_rollout(
            {
                "model_version": "tiny:1",
                "selector": {"tags": ["line-1"]},
                "strategy": {"canary_share": 0.5, "waves": 1},
            }
        )
        assert ctl.wait_for_rollout(r.id, timeout_s=30).state.value == "succeeded"
        ids = [
            ctl.send_benchmark(a.device_id, {"model_version": "tiny:2", "precisions": ["fp32", "int8"]})
            for a in agents
        ] + [ctl.send_benchmark(a.device_id, {"model_version": "tiny:3"}) for a in agents]
        ctl.wait_for_reports(ids, timeout_s=30)
        # 50 minutes of one-minute telemetry windows, as the MQTT ingest writes them (that path:
        # tests/controller/test_telemetry.py); the dashboard charts the first online device's
        now = datetime.now(timezone.utc).replace(second=0, microsecond=0)
        with ctl.session() as s:
            for a in agents:
                for m in range(50):
                    s.add(TelemetryAggregate(device_id=a.device_id, window_start=now - timedelta(minutes=49 - m),
                                             samples=6, fps_mean=100 + 20 * math.sin(m / 5), latency_p99_ms_max=8 + m % 7,
                                             cpu_percent_mean=30 + m % 20, memory_bytes_max=(200 + m) * 10**6,
                                             temperature_c_max=45 + m / 10, stream_fps_mean=25 + m % 5, requests=m * 60))  # fmt: skip
            s.commit()

        url = f"http://127.0.0.1:{ctl.http_port}/dashboard#token=test-api-token"
        shot = tmp_path / "dashboard.png"
        subprocess.run(
            [CHROMIUM, *FLAGS, f"--screenshot={shot}", url], check=True, capture_output=True, timeout=90
        )
        assert shot.exists() and shot.stat().st_size > 10_000
        dom = subprocess.run(
            [CHROMIUM, *FLAGS, "--dump-dom", url], check=True, capture_output=True, text=True, timeout=90
        ).stdout
        assert 'data-loaded="1"' in dom, dom[:2000]
        assert re.search(r'<b id="n-devices">2</b>', dom) and re.search(r'<b id="n-online">2</b>', dom)
        for a in agents:
            assert f'data-device="{a.device_id}" data-online="true"' in dom
        assert dom.count('<td class="active">tiny:1</td>') == 2
        assert (
            f'data-rollout="{r.id}" data-state="succeeded"' in dom
            and '<span class="progress">2/2</span>' in dom
        )
        # 2 classes x (tiny:1 fp32 + tiny:2 fp32/int8 + tiny:3 fp32)
        assert len(re.findall(r'<circle class="point" cx="[0-9.]+"', dom)) == 8
        # what each class runs is ringed and labelled; the Pareto points are labelled; the rest only
        # carry a hover title
        assert len(re.findall(r'<circle class="running" cx="[0-9.]+"', dom)) == 2
        labels = re.findall(r'<text class="label" x="[0-9.]+"[^>]*>([^<]*)</text>', dom)
        assert "tiny:1 fp32" in labels and any(t.startswith("tiny:2") for t in labels), labels
        assert not any("tiny:3" in t for t in labels), labels
        assert dom.count('data-labelled="false"') == 2 and dom.count("tiny:3 onnxruntime/fp32") == 2
        assert "cpu-1t" in dom and "cpu-4t" in dom
        # the per-device time series of the last hour: one line per metric, a point per window
        assert re.search(r'data-series="[0-9a-f-]+"', dom), "the series never loaded"
        for metric in ("fps", "latency_p99_ms", "cpu_percent", "memory_bytes", "temperature_c", "stream_fps"):
            assert f'data-metric="{metric}" data-points="50"' in dom, metric
        assert "50 one-minute windows" in dom
        out = Path(__file__).resolve().parents[2] / "results"
        if out.is_dir():  # keep the screenshot where the docs can point at it (never committed)
            shutil.copy(shot, out / "dashboard.png")
    finally:
        for a in agents:
            a.stop()
        ctl.stop()
