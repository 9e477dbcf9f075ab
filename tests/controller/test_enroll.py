"""Enrolment over real gRPC on loopback: tokens in, credentials out; unknown and revoked devices refused."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from ctl_helpers import make_controller, minimal_hardware, start_agent, trust, wait_until
from sqlmodel import select

from agent.fleet.client import AgentIdentity, DeviceRefused, FleetClient
from controller import crud
from controller.models import Device
from protos import fleet_pb2


def _client(ctl, agent_dir: Path, token: str = "test-enrollment-token", name: str = "d1") -> FleetClient:
    identity = AgentIdentity(name=name, hardware=minimal_hardware("cpu-a"), tags=["lab"], agent_version="t")
    return FleetClient(ctl.grpc_target, agent_dir, identity, token, **trust(ctl))


def test_enrol_saves_credentials_and_shows_up(controller, tmp_path: Path) -> None:
    client = _client(controller, tmp_path / "agent")
    creds = client.register()
    try:
        assert creds.device_id and creds.client_cert_pem and creds.ca_pem and not creds.device_token
        assert bytes.fromhex(creds.public_key_hex) == controller.ctx.signer.public_key_bytes
        saved = tmp_path / "agent" / "fleet" / "credentials.json"
        assert saved.stat().st_mode & 0o777 == 0o600
        with controller.session() as s:
            device = crud.get_device(session=s, device_id=creds.device_id)
            assert device.hardware_class == "cpu-a" and device.tags == ["lab"]
            assert device.token_hash  # the hash of the one valid certificate serial
        # renewing with its own certificate keeps the identity (and rotates the certificate)
        again = _client(controller, tmp_path / "agent").register()
        assert again.device_id == creds.device_id and again.client_cert_pem != creds.client_cert_pem
        with controller.session() as s:
            assert len(s.exec(select(Device)).all()) == 1
    finally:
        client.close()


def test_agents_never_get_the_controllers_broker_password() -> None:
    from controller.grpc.server import agent_mqtt_url

    assert agent_mqtt_url("mqtt://controller:s3cret@broker:1883") == "mqtt://broker:1883"
    assert agent_mqtt_url("mqtts://u@[::1]:8883/x") == "mqtts://[::1]:8883/x"
    assert agent_mqtt_url("mqtt://broker:1883") == "mqtt://broker:1883" and agent_mqtt_url("") == ""


def test_wrong_enrollment_token_is_refused(controller, tmp_path: Path) -> None:
    client = _client(controller, tmp_path / "agent", token="not-the-token")
    with pytest.raises(DeviceRefused, match="enrolment refused: invalid"):
        client.register()
    client.close()
    with controller.session() as s:
        assert s.exec(select(Device)).all() == []


def test_unknown_device_and_bad_token_are_refused_insecure_mode(tmp_path: Path) -> None:
    """The --insecure metadata credentials (TLS mode: tests/security)."""
    controller = make_controller(tmp_path / "data", None, insecure=True)
    channel = grpc.insecure_channel(controller.grpc_target)
    from protos import fleet_pb2_grpc

    stub = fleet_pb2_grpc.FleetServiceStub(channel)
    hello = iter([fleet_pb2.AgentMessage(hello=fleet_pb2.Hello())])
    with pytest.raises(grpc.RpcError) as err:
        list(stub.Connect(hello, metadata=(("x-edgeloop-device", "nope"), ("authorization", "Bearer x"))))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "unknown device" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportResult(fleet_pb2.ResultReport(), metadata=())
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    # an id the controller never issued cannot re-register either
    with pytest.raises(grpc.RpcError) as err:
        stub.Register(fleet_pb2.RegisterRequest(enrollment_token="test-enrollment-token", device_id="forged"))
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    channel.close()
    controller.stop()


def test_revoked_device_is_cut_off_and_refused(controller, tmp_path: Path) -> None:
    agent = start_agent(controller.grpc_target, tmp_path / "agent", "test-enrollment-token", name="r1")
    device_id = agent.device_id
    wait_until(lambda: controller.ctx.hub.is_connected(device_id), 10, "stream open")
    from controller.services import fleet

    with controller.session() as s:
        fleet.revoke_device(session=s, cache=controller.ctx.tokens, device_id=device_id)
    controller.ctx.hub.kick(device_id)
    agent.thread.join(timeout=20)
    assert not agent.thread.is_alive(), "a revoked agent must stop, not retry forever"
    assert agent.error and isinstance(agent.error[0], DeviceRefused) and "revoked" in str(agent.error[0])
    with pytest.raises(DeviceRefused, match="enrolment refused"):
        _client(controller, tmp_path / "agent").register()
    agent.client.close()
