"""Telemetry through a real Mosquitto (the ``mqtt_broker`` fixture) to a real subscriber."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from agent.stats import RequestStats
from agent.telemetry import Telemetry, metrics_collector, parse_mqtt_url

ROOT = Path(__file__).resolve().parents[2]


class Subscriber:
    def __init__(self, url: str, topic: str) -> None:
        host, port, _ = parse_mqtt_url(url)
        self.messages: queue.Queue = queue.Queue()
        self.subscribed = queue.Queue()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{time.time_ns()}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.put(True)
        self.client.on_message = lambda c, u, m: self.messages.put((m.topic, json.loads(m.payload), m.retain))
        self.client.connect(host, port)
        self.client.loop_start()
        self.subscribed.get(timeout=10)

    def wait(self, predicate, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                item = self.messages.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if predicate(item):
                return item
        raise AssertionError("expected message not received")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def telemetry(mqtt_broker):
    t = Telemetry(mqtt_broker.url, "dev-1", prefix="test", hardware_class="x86-test",
                  reconnect_min_s=2, reconnect_max_s=2, keepalive_s=5).start(wait_s=10)  # fmt: skip
    assert t.connected
    yield t
    t.stop()


def test_state_metrics_and_events_reach_a_subscriber(mqtt_broker, telemetry) -> None:
    sub = Subscriber(mqtt_broker.url, "test/devices/dev-1/#")
    try:
        _, state, retained = sub.wait(lambda m: m[0].endswith("/state"))
        assert retained and state["state"] == "online" and state["schema_version"] == 1
        assert state["hardware_class"] == "x86-test" and state["agent_version"]

        class Slots:
            active = None

        stats = RequestStats()
        stats.record(0.004, 8)
        telemetry.start_metrics(metrics_collector(Slots(), stats), interval_s=0.2)
        _, metrics, _ = sub.wait(lambda m: m[0].endswith("/metrics"))
        for key in ("ts", "active_version", "requests", "fps", "latency_ms", "cpu_percent", "memory_bytes",
                    "gpu_util_percent", "temperature_c", "power_w"):  # fmt: skip
            assert key in metrics, key
        assert metrics["requests"] == 1 and metrics["latency_ms"]["p50"] == pytest.approx(4.0)
        assert metrics["gpu_util_percent"] is None  # this host has no GPU: null, not 0
        telemetry.event("switched", "colour:2", {"from": "colour:1"})
        _, event, _ = sub.wait(lambda m: m[0].endswith("/events"))
        assert event == {**event, "event": "switched", "model_version": "colour:2", "details": {"from": "colour:1"},
                         "device_id": "dev-1", "schema_version": 1}  # fmt: skip
        with pytest.raises(ValueError):
            telemetry.event("exploded")
    finally:
        sub.close()


def test_broker_restart_loses_no_qos1_event(mqtt_broker, telemetry) -> None:
    mqtt_broker.stop()
    deadline = time.monotonic() + 10
    while telemetry.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not telemetry.connected
    for i in range(5):
        assert telemetry.event("built", f"colour:{i}", {"i": i})
    mqtt_broker.start()
    sub = Subscriber(mqtt_broker.url, "test/devices/dev-1/events")  # subscribed before the agent is back
    try:
        got = []
        while len(got) < 5:
            _, payload, _ = sub.wait(lambda m: True, timeout=15)
            got.append(payload["details"]["i"])
        assert sorted(got) == [0, 1, 2, 3, 4]
        assert telemetry.connected
    finally:
        sub.close()


def test_queue_is_bounded_while_broker_is_away(mqtt_broker) -> None:
    t = Telemetry(mqtt_broker.url, "dev-2", prefix="test", queue_limit=3, reconnect_min_s=1).start(wait_s=10)
    try:
        mqtt_broker.stop()
        deadline = time.monotonic() + 10
        while t.connected and time.monotonic() < deadline:
            time.sleep(0.05)
        results = [t.event("built", "v", {"i": i}) for i in range(6)]
        assert results.count(False) == t.dropped >= 3
    finally:
        t.stop(timeout_s=1)


AGENT = textwrap.dedent(
    """
    import sys, time
    from agent.telemetry import Telemetry
    t = Telemetry(sys.argv[1], "dev-will", prefix="test", keepalive_s=2).start(wait_s=10)
    print("up", flush=True)
    time.sleep(60)
    """
)


def test_last_will_offline_on_abrupt_disconnect(mqtt_broker, tmp_path) -> None:
    sub = Subscriber(mqtt_broker.url, "test/devices/dev-will/state")
    script = tmp_path / "agent_proc.py"
    script.write_text(AGENT)
    proc = subprocess.Popen([sys.executable, str(script), mqtt_broker.url], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "up"
        sub.wait(lambda m: m[1]["state"] == "online")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        _, state, _ = sub.wait(lambda m: m[1]["state"] == "offline", timeout=15)
        assert state["device_id"] == "dev-will" and state["schema_version"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    # the offline state is retained: a late subscriber sees it too
    late = Subscriber(mqtt_broker.url, "test/devices/dev-will/state")
    try:
        _, state, retained = late.wait(lambda m: True)
        assert retained and state["state"] == "offline"
    finally:
        late.close()


def test_clean_stop_publishes_offline(mqtt_broker) -> None:
    t = Telemetry(mqtt_broker.url, "dev-3", prefix="test").start(wait_s=10)
    t.stop()
    sub = Subscriber(mqtt_broker.url, "test/devices/dev-3/state")
    try:
        _, state, retained = sub.wait(lambda m: True)
        assert retained and state["state"] == "offline"
    finally:
        sub.close()


def test_mqtt_url_credentials_are_kept_and_decoded() -> None:
    from agent.telemetry import mqtt_credentials

    assert mqtt_credentials("mqtt://agent:s%40cret@broker:1883") == ("agent", "s@cret")
    assert mqtt_credentials("mqtts://broker:8883") is None
    assert parse_mqtt_url("mqtt://agent:pw@broker:1884") == ("broker", 1884, False)
