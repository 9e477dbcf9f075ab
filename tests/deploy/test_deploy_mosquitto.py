"""deploy/mosquitto/ on a real Mosquitto: authentication on, and the ACLs do what they say.

The config file is used as written, with only its host-specific lines moved into a temp dir
(listener port, password file, ACL file, persistence and log locations). Users and passwords are made
with mosquitto_passwd, as deploy/README.md tells operators to.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_files import start_deploy_broker

from controller.broker import free_port, wait_for_port

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt is not installed")

USERS = {"controller": "pw-controller", "agent": "pw-agent", "monitor": "pw-monitor"}


@pytest.fixture
def secured_broker(tmp_path: Path) -> Iterator[int]:
    broker = start_deploy_broker(tmp_path, USERS, free_port())
    if isinstance(broker, str):
        pytest.skip(broker)
    try:
        wait_for_port("127.0.0.1", broker.port)
        yield broker.port
    finally:
        broker.stop()


class Client:
    """A paho client that records what it receives and how its connection went."""

    def __init__(
        self, port: int, user: str | None, password: str | None, will: tuple[str, str] | None = None
    ):
        self.messages: list[tuple[str, bytes]] = []
        self.reason: int | None = None
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{user}-{time.monotonic_ns()}"
        )
        if user:
            self.client.username_pw_set(user, password)
        if will:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, m.payload))
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        self.reason = reason_code.value if hasattr(reason_code, "value") else int(reason_code)
        self.connected.set()

    def wait_connect(self) -> int:
        assert self.connected.wait(10), "no CONNACK"
        assert self.reason is not None
        return self.reason

    def subscribe(self, topic: str) -> None:
        self.subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self.subscribed.wait(10)

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _wait_for(predicate, timeout: float = 5.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def test_authentication_is_required(secured_broker: int) -> None:
    anonymous = Client(secured_broker, None, None)
    wrong = Client(secured_broker, "agent", "not-the-password")
    good = Client(secured_broker, "agent", USERS["agent"])
    try:
        assert anonymous.wait_connect() != 0, "anonymous clients must be refused"
        assert wrong.wait_connect() != 0, "a wrong password must be refused"
        assert good.wait_connect() == 0
    finally:
        for c in (anonymous, wrong, good):
            c.client.loop_stop()


def test_acl_agents_write_own_telemetry_controller_reads_all(secured_broker: int) -> None:
    controller = Client(secured_broker, "controller", USERS["controller"])
    monitor = Client(secured_broker, "monitor", USERS["monitor"])
    will = json.dumps({"schema_version": 1, "device_id": "dev-1", "state": "offline", "ts": 0})
    agent = Client(secured_broker, "agent", USERS["agent"], will=("edgeloop/devices/dev-1/state", will))
    try:
        for c in (controller, monitor, agent):
            assert c.wait_connect() == 0
        controller.subscribe("edgeloop/#")
        monitor.subscribe("edgeloop/#")
        agent.subscribe("edgeloop/#")  # granted by MQTT 3.1.1, but the ACL delivers nothing to it

        online = json.dumps({"schema_version": 1, "device_id": "dev-1", "state": "online"})
        agent.publish("edgeloop/devices/dev-1/state", online, retain=True)
        agent.publish("edgeloop/devices/dev-1/metrics", '{"fps": 1}')
        agent.publish("edgeloop/devices/dev-1/events", '{"event": "built"}')
        agent.publish("edgeloop/fleet/commands", "not allowed")  # outside its ACL: dropped
        monitor.publish("edgeloop/devices/dev-1/events", "monitor is read-only")  # dropped
        controller.publish("edgeloop/controller/ping", "controller may write")

        def topics(c: Client) -> set[str]:
            return {t for t, _ in c.messages}

        expected = {
            "edgeloop/devices/dev-1/state",
            "edgeloop/devices/dev-1/metrics",
            "edgeloop/devices/dev-1/events",
            "edgeloop/controller/ping",
        }
        assert _wait_for(lambda: expected <= topics(controller)), controller.messages
        assert _wait_for(lambda: expected <= topics(monitor)), monitor.messages
        time.sleep(0.5)
        assert "edgeloop/fleet/commands" not in topics(controller)
        assert b"monitor is read-only" not in {p for _, p in controller.messages}
        assert agent.messages == [], "agents must not read the fleet's telemetry"

        # The last-will (retained offline state) passes the ACL when the agent drops off.
        controller.messages.clear()
        agent.client.loop_stop()
        agent.client.socket().close()
        assert _wait_for(lambda: ("edgeloop/devices/dev-1/state", will.encode()) in controller.messages, 10)
    finally:
        for c in (controller, monitor):
            c.stop()
