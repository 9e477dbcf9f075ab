"""Finding 3: telemetry forgery. The broker the controller starts (a real Mosquitto) refuses
anonymous clients and lets each device write only its own topics with its own account; the
controller drops telemetry for ids it does not know (tested through an open broker, where
nothing else would stop it)."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from ctl_helpers import make_controller, minimal_hardware, start_agent, trust, wait_until
from sqlmodel import select

from agent.fleet.client import AgentIdentity, FleetClient
from controller.broker_auth import CONTROLLER_USER, check_hash, mosquitto_hash
from controller.models import Device, DeviceEvent

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs the mosquitto binary")
TOKEN = "test-enrollment-token"


def _connect(port: int, user: str | None = None, password: str | None = None) -> tuple[mqtt.Client, int]:
    """A client and the broker's CONNACK reason (0 = accepted)."""
    result: dict[str, int] = {}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    if user is not None:
        client.username_pw_set(user, password)

    def on_connect(c, userdata, flags, reason_code, properties) -> None:  # noqa: ANN001
        result["rc"] = reason_code.value
        done.set()

    client.on_connect = on_connect
    client.connect("127.0.0.1", port)
    client.loop_start()
    assert done.wait(10), "no CONNACK"
    return client, result["rc"]


def _enrol(ctl, agent_dir: Path, name: str):
    client = FleetClient(
        ctl.grpc_target, agent_dir, AgentIdentity(name, minimal_hardware("cpu-m")), TOKEN, **trust(ctl)
    )
    creds = client.register()
    client.close()
    return creds


def _state(ctl, device_id: str) -> str:
    with ctl.session() as s:
        return s.get(Device, device_id).telemetry_state


def test_password_hashes_in_mosquittos_format() -> None:
    stored = mosquitto_hash("pw", salt=b"0123456789ab")
    assert stored.startswith("$7$101$") and check_hash("pw", stored) and not check_hash("px", stored)


@pytest.fixture
def ctl(tmp_path: Path):
    c = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'c.db'}", start_broker=True)
    try:
        assert c.broker is not None and c.broker.kind == "mosquitto"
        assert c.telemetry is not None and c.telemetry.connected.wait(15), (
            "the controller's own account works"
        )
        yield c
    finally:
        c.stop()


def test_anonymous_and_wrong_passwords_are_refused(ctl, tmp_path: Path) -> None:
    port = ctl.broker.port
    for user, password in ((None, None), ("nobody", "x"), (CONTROLLER_USER, "guess")):
        client, rc = _connect(port, user, password)
        client.loop_stop()
        assert rc != 0, f"{user!r} was let in"
    creds = _enrol(ctl, tmp_path / "a", "m1")
    assert creds.mqtt_username == creds.device_id and creds.mqtt_password
    assert creds.mqtt_url and "@" not in creds.mqtt_url, "the controller's own password is never sent"
    assert (tmp_path / "data" / "mqtt" / "passwd").stat().st_mode & 0o077 == 0


def test_a_device_writes_only_its_own_topics(ctl, tmp_path: Path) -> None:
    victim = _enrol(ctl, tmp_path / "v", "victim")
    attacker = _enrol(ctl, tmp_path / "a", "attacker")
    port = ctl.broker.port
    client, rc = None, -1
    deadline = time.monotonic() + 10
    while rc != 0 and time.monotonic() < deadline:  # the broker reloads its password file on SIGHUP
        if client is not None:
            client.loop_stop()
        client, rc = _connect(port, attacker.mqtt_username, attacker.mqtt_password)
        time.sleep(0.2 if rc else 0)
    assert rc == 0, "the device's own account connects"
    online = json.dumps({"schema_version": 1, "state": "online"})
    # a forged retained "online" and an event for the victim, with the attacker's own account
    client.publish(f"edgeloop/devices/{victim.device_id}/state", online, qos=1, retain=True).wait_for_publish(
        5
    )
    client.publish(
        f"edgeloop/devices/{victim.device_id}/events", json.dumps({"event": "switched"}), qos=1
    ).wait_for_publish(5)
    # its own state goes through (the same connection, so the forged ones were sent before it)
    client.publish(
        f"edgeloop/devices/{attacker.device_id}/state", online, qos=1, retain=True
    ).wait_for_publish(5)
    wait_until(lambda: _state(ctl, attacker.device_id) == "online", 15, "own state ingested")
    time.sleep(0.5)
    assert _state(ctl, victim.device_id) == "unknown", "the forged state never reached the controller"
    with ctl.session() as s:
        assert s.exec(select(DeviceEvent).where(DeviceEvent.device_id == victim.device_id)).all() == []
    client.loop_stop()
    client.disconnect()


def test_a_revoked_device_loses_its_broker_account(ctl, tmp_path: Path) -> None:
    agent = start_agent(ctl.grpc_target, tmp_path / "a", TOKEN, name="r")
    creds = agent.client.credentials
    agent.stop()
    from controller.services import fleet

    with ctl.session() as s:
        fleet.revoke_device(session=s, cache=ctl.ctx.tokens, device_id=creds.device_id)
    ctl.ctx.broker_accounts.remove(creds.device_id)  # what the REST revoke does after its commit
    assert creds.device_id not in ctl.ctx.broker_accounts.users()
    rc = 0
    deadline = time.monotonic() + 10
    while rc == 0 and time.monotonic() < deadline:
        client, rc = _connect(ctl.broker.port, creds.mqtt_username, creds.mqtt_password)
        client.loop_stop()
        client.disconnect()
        time.sleep(0.2)
    assert rc != 0


def test_telemetry_for_an_unknown_id_is_dropped(tmp_path: Path, mqtt_broker) -> None:
    """On an open broker (the operator's, misconfigured) the controller itself drops it."""
    ctl = make_controller(tmp_path / "data", None, mqtt_url=mqtt_broker.url, http=True)
    try:
        assert ctl.telemetry.connected.wait(10)
        known = _enrol(ctl, tmp_path / "k", "known")
        pub, rc = _connect(mqtt_broker.port)
        assert rc == 0
        for device_id in ("ghost", known.device_id):
            base = f"edgeloop/devices/{device_id}"
            pub.publish(
                f"{base}/state", json.dumps({"state": "online"}), qos=1, retain=True
            ).wait_for_publish(5)
            pub.publish(f"{base}/events", json.dumps({"event": "switched"}), qos=1).wait_for_publish(5)
            pub.publish(f"{base}/metrics", json.dumps({"fps": 99.0}), qos=0)
        # a payload that names another device than its topic is dropped too
        pub.publish(f"edgeloop/devices/{known.device_id}/events",
                    json.dumps({"device_id": "ghost", "event": "deploy_failed"}), qos=1).wait_for_publish(5)  # fmt: skip
        wait_until(lambda: _state(ctl, known.device_id) == "online", 15, "known device ingested")
        time.sleep(0.5)
        ctl.telemetry.flush_windows()
        with ctl.session() as s:
            assert s.get(Device, "ghost") is None
            events = s.exec(select(DeviceEvent)).all()
            assert [(e.device_id, e.event) for e in events] == [(known.device_id, "switched")]
        text = "".join(str(m) for m in ctl.ctx.metrics.registry.collect())
        assert "ghost" not in text, "no metric series for an unknown id"
        assert ctl.telemetry.dropped >= 4
        pub.loop_stop()
    finally:
        ctl.stop()
