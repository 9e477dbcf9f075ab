"""Telemetry through a real broker: online from the retained state, offline from the last-will when
an agent process dies, metrics into Prometheus and the aggregates table, reconnect after an outage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from ctl_helpers import make_controller, minimal_hardware, trust, wait_until
from sqlmodel import select

from agent.fleet.client import AgentIdentity, FleetClient
from controller.models import DeviceEvent, TelemetryAggregate

API = {"Authorization": "Bearer test-api-token"}  # per-device series are shown with the API token only
PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as mqtt
host, port, device = sys.argv[1], int(sys.argv[2]), sys.argv[3]
topic = f"edgeloop/devices/{device}/"
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"agent-{device}")
c.will_set(topic + "state", json.dumps({"schema_version": 1, "device_id": device, "state": "offline", "ts": time.time()}), qos=1, retain=True)
c.connect(host, port, keepalive=5)
c.loop_start()
c.publish(topic + "state", json.dumps({"schema_version": 1, "device_id": device, "state": "online", "ts": time.time(),
          "agent_version": "t", "hardware_class": "cpu-t"}), qos=1, retain=True).wait_for_publish()
c.publish(topic + "events", json.dumps({"schema_version": 1, "ts": time.time(), "event": "switched",
          "model_version": "tiny:1", "details": {"from": ""}}), qos=1).wait_for_publish()
for i in range(1000):
    c.publish(topic + "metrics", json.dumps({"schema_version": 1, "ts": time.time(), "active_version": "tiny:1",
              "requests": i, "fps": 120.0 + i % 3, "latency_ms": {"p50": 4.0, "p90": 5.0, "p99": 7.5},
              "cpu_percent": 35.0, "memory_bytes": 123456789, "gpu_util_percent": None,
              "temperature_c": 51.5 + i % 2, "power_w": None,
              "streams": [{"pipeline": "p", "sources": [{"fps": 12.0}, {"fps": 13.0}, {"fps": "x"}]}]}), qos=0)
    print("published", flush=True)
    time.sleep(0.1)
"""


def _device(ctl, tmp_path: Path) -> str:
    client = FleetClient(
        ctl.grpc_target,
        tmp_path / "agent",
        AgentIdentity("t1", minimal_hardware("cpu-t")),
        "test-enrollment-token",
        **trust(ctl),
    )
    device_id = client.register().device_id
    client.close()
    return device_id


def _state(ctl, device_id: str) -> tuple[str, bool]:
    d = next(d for d in ctl.list_devices() if d.id == device_id)
    return d.telemetry_state, d.online


def test_online_offline_from_last_will_and_metrics(tmp_path: Path, sqlite_url: str, mqtt_broker) -> None:
    ctl = make_controller(tmp_path / "data", sqlite_url, http=True, mqtt_url=mqtt_broker.url)
    proc = None
    try:
        assert ctl.telemetry is not None and ctl.telemetry.connected.wait(10)
        device_id = _device(ctl, tmp_path)
        assert _state(ctl, device_id) == ("unknown", False)
        proc = subprocess.Popen(
            [sys.executable, "-c", PUBLISHER, mqtt_broker.host, str(mqtt_broker.port), device_id],
            stdout=subprocess.PIPE,
            text=True,
        )
        wait_until(lambda: _state(ctl, device_id) == ("online", True), 15, "online from the retained state")
        wait_until(
            lambda: (
                f'device_id="{device_id}"'
                in httpx.get(f"http://127.0.0.1:{ctl.http_port}/metrics", headers=API).text
            ),
            15,
            "device gauge in /metrics",
        )
        text = httpx.get(f"http://127.0.0.1:{ctl.http_port}/metrics", headers=API).text
        fps_line = next(line for line in text.splitlines() if line.startswith("edgeloop_device_fps{"))
        assert 'hardware_class="cpu-t"' in fps_line and float(fps_line.split()[-1]) >= 120
        assert 'edgeloop_devices{state="online"} 1.0' in text
        proc.send_signal(signal.SIGKILL)  # the agent dies: no clean disconnect, the broker sends the will
        proc.wait()
        wait_until(lambda: _state(ctl, device_id) == ("offline", False), 20, "offline from the last-will")
        ctl.telemetry.flush_windows()
        with ctl.session() as s:
            agg = s.exec(select(TelemetryAggregate).where(TelemetryAggregate.device_id == device_id)).all()
            assert agg and sum(a.samples for a in agg) >= 1
            assert agg[-1].latency_p99_ms_max == 7.5 and agg[-1].memory_bytes_max == 123456789
            assert agg[-1].active_version == "tiny:1"
            events = s.exec(select(DeviceEvent).where(DeviceEvent.device_id == device_id)).all()
            assert [e.event for e in events] == ["switched"]
        r = httpx.get(
            f"http://127.0.0.1:{ctl.http_port}/api/v1/devices/{device_id}/telemetry",
            headers={"Authorization": "Bearer test-api-token"},
        )
        assert r.status_code == 200 and r.json()[0]["samples"] >= 1
        series = httpx.get(
            f"http://127.0.0.1:{ctl.http_port}/api/v1/devices/{device_id}/series?minutes=60",
            headers={"Authorization": "Bearer test-api-token"},
        ).json()  # the dashboard's charts: the windows ingested in the last hour, oldest first
        assert series["window_s"] == 60 and series["points"]
        last = series["points"][-1]
        assert last["latency_p99_ms"] == 7.5 and last["memory_bytes"] == 123456789 and last["fps"] >= 120
        assert last["temperature_c"] in (51.5, 52.5) and last["cpu_percent"] == 35.0
        assert last["stream_fps"] == 25.0  # two sources' frames/s; a malformed one counts 0
        ts = [p["t"] for p in series["points"]]
        assert ts == sorted(ts)
        for bad in ("minutes=0", "minutes=5000", "minutes=x"):
            r = httpx.get(f"http://127.0.0.1:{ctl.http_port}/api/v1/devices/{device_id}/series?{bad}",
                          headers={"Authorization": "Bearer test-api-token"})  # fmt: skip
            assert r.status_code == 422, bad
        r = httpx.get(f"http://127.0.0.1:{ctl.http_port}/api/v1/devices/nobody/series",
                      headers={"Authorization": "Bearer test-api-token"})  # fmt: skip
        assert r.status_code == 404

        # broker outage: the controller's subscriber reconnects and keeps ingesting
        mqtt_broker.restart(down_seconds=0.5)
        assert ctl.telemetry.connected.wait(20), "subscriber did not reconnect"
        time.sleep(0.3)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        pub.connect(mqtt_broker.host, mqtt_broker.port)
        pub.loop_start()
        pub.publish(
            f"edgeloop/devices/{device_id}/state",
            json.dumps({"schema_version": 1, "state": "online"}),
            qos=1,
            retain=True,
        ).wait_for_publish()
        wait_until(
            lambda: _state(ctl, device_id) == ("online", True), 15, "online after the broker came back"
        )
        pub.loop_stop()
        pub.disconnect()
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
        ctl.stop()
