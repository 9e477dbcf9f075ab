"""Findings 1 and 7: identity takeover and plaintext gRPC. A real controller with its CA, real
agents enrolling over the TLS enrolment port and calling over mutual TLS on loopback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ctl_helpers import make_controller, minimal_hardware, start_agent, trust, wait_until
from sqlmodel import select

from agent.fleet.client import AgentIdentity, Credentials, DeviceRefused, FleetClient, FleetStub
from agent.fleet.tls import TLS_NAME, new_key_and_csr
from controller.models import Device, EnrollmentToken, Result
from controller.services.ca import TLS_NAME as CONTROLLER_TLS_NAME
from protos import fleet_pb2

TOKEN = "test-enrollment-token"
API = {"Authorization": "Bearer test-api-token"}


@pytest.fixture
def ctl(tmp_path: Path):
    c = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'c.db'}", http=True)
    try:
        yield c
    finally:
        c.stop()


def _client(ctl, agent_dir: Path, token: str = TOKEN, name: str = "d", **over: object) -> FleetClient:
    identity = AgentIdentity(name=name, hardware=minimal_hardware("cpu-s"), agent_version="t")
    return FleetClient(ctl.grpc_target, agent_dir, identity, token, **(trust(ctl) | over))


def _devices(ctl) -> list[Device]:
    with ctl.session() as s:
        return list(s.exec(select(Device)).all())


def _enrol_stub(ctl) -> tuple[grpc.Channel, FleetStub]:
    """A TLS channel to the enrolment port trusting the real CA (an attacker may know it too)."""
    ca = ctl.ctx.ca.cert_pem
    channel = grpc.secure_channel(
        ctl.enroll_target,
        grpc.ssl_channel_credentials(root_certificates=ca),
        options=[("grpc.ssl_target_name_override", TLS_NAME)],
    )
    return channel, FleetStub(channel)


def _mtls_stub(ctl, key_pem: bytes, cert_pem: bytes) -> tuple[grpc.Channel, FleetStub]:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ctl.ctx.ca.cert_pem, private_key=key_pem, certificate_chain=cert_pem
    )
    channel = grpc.secure_channel(
        ctl.grpc_target, creds, options=[("grpc.ssl_target_name_override", TLS_NAME)]
    )
    return channel, FleetStub(channel)


def test_the_agent_and_controller_agree_on_the_tls_name() -> None:
    assert TLS_NAME == CONTROLLER_TLS_NAME


def test_takeover_by_re_registering_another_id_is_refused(ctl, tmp_path: Path) -> None:
    victim = start_agent(ctl.grpc_target, tmp_path / "victim", TOKEN, name="victim")
    try:
        before = _devices(ctl)[0].token_hash
        channel, stub = _enrol_stub(ctl)
        _, csr = new_key_and_csr("attacker")
        answers = []
        for device_id in (victim.device_id, "0" * 32):  # an enrolled id and one that never existed
            with pytest.raises(grpc.RpcError) as err:
                stub.Register(
                    fleet_pb2.RegisterRequest(enrollment_token=TOKEN, device_id=device_id, csr_pem=csr)
                )
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            answers.append(err.value.details())
        assert answers[0] == answers[1], "the answer must not tell an enrolled id from an unknown one"
        with pytest.raises(grpc.RpcError) as err:  # a wrong token: one message whatever the id
            stub.Register(
                fleet_pb2.RegisterRequest(enrollment_token="wrong", device_id=victim.device_id, csr_pem=csr)
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
        assert [d.id for d in _devices(ctl)] == [victim.device_id], "nothing stored"
        # the victim is untouched: its credential is the same and its stream still open
        assert _devices(ctl)[0].token_hash == before and ctl.ctx.hub.is_connected(victim.device_id)
    finally:
        victim.stop()


def test_the_device_id_comes_from_the_certificate_not_the_request(ctl, tmp_path: Path) -> None:
    victim = start_agent(ctl.grpc_target, tmp_path / "victim", TOKEN, name="victim")
    attacker = _client(ctl, tmp_path / "attacker", name="attacker")
    attacker.register()
    try:
        # the victim's id in the metadata (the old credential scheme) changes nothing
        forged = (("x-edgeloop-device", victim.device_id), ("authorization", "Bearer stolen"))
        with pytest.raises(grpc.RpcError) as err:
            attacker.stub.ReportResult(
                fleet_pb2.ResultReport(report=fleet_pb2.Report(command_id="c", model_version="m")),
                metadata=forged,
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED  # judged as the attacker's report
        with ctl.session() as s:
            assert s.exec(select(Result)).all() == []
    finally:
        attacker.close()
        victim.stop()


def _foreign_cert(common_name: str) -> tuple[bytes, bytes]:
    """A client certificate for ``common_name`` from a CA that is not the controller's."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rogue CA")])
    cert = (
        x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def test_a_certificate_from_another_ca_or_no_tls_is_refused(ctl, tmp_path: Path) -> None:
    victim = start_agent(ctl.grpc_target, tmp_path / "victim", TOKEN, name="victim")
    try:
        key, cert = _foreign_cert(victim.device_id)
        channel, stub = _mtls_stub(ctl, key, cert)
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportResult(fleet_pb2.ResultReport(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails
        channel.close()
        plain = grpc.insecure_channel(ctl.grpc_target)
        with pytest.raises(grpc.RpcError) as err:
            FleetStub(plain).ReportResult(fleet_pb2.ResultReport(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE, "no plaintext without --insecure"
        plain.close()
        # the enrolment port serves TLS only too, and its RPCs other than Register need a certificate
        channel, stub = _enrol_stub(ctl)
        with pytest.raises(grpc.RpcError) as err:
            stub.ReportResult(fleet_pb2.ResultReport(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        channel.close()
    finally:
        victim.stop()


def test_man_in_the_middle_at_first_contact_is_refused(ctl, tmp_path: Path) -> None:
    impostor = make_controller(tmp_path / "impostor", None)  # another CA on another port
    try:
        client = _client(ctl, tmp_path / "agent", enroll_target=impostor.enroll_target)
        with pytest.raises(DeviceRefused, match="man-in-the-middle"):
            client.register()
        client.close()
        with impostor.session() as s:
            assert s.exec(select(Device)).all() == [], "the token never reached the impostor"
        assert not (tmp_path / "agent" / "fleet" / "credentials.json").exists()
        with pytest.raises(DeviceRefused, match="not the pinned"):
            _client(ctl, tmp_path / "agent2", ca_fingerprint="sha256:" + "ab" * 32).register()
    finally:
        impostor.stop()
    assert _devices(ctl) == []


def test_revocation_ends_open_streams_and_the_operator_re_enrols(ctl, tmp_path: Path) -> None:
    agent = start_agent(ctl.grpc_target, tmp_path / "agent", TOKEN, name="r1")
    device_id = agent.device_id
    old = Credentials.load(tmp_path / "agent" / "fleet" / "credentials.json")
    base = f"http://127.0.0.1:{ctl.http_port}/api/v1"
    wait_until(lambda: ctl.ctx.hub.is_connected(device_id), 10, "stream open")
    assert httpx.post(f"{base}/devices/{device_id}/revoke", headers=API).status_code == 200
    agent.thread.join(timeout=20)
    assert not agent.thread.is_alive() and isinstance(agent.error[0], DeviceRefused)
    assert not ctl.ctx.hub.is_connected(device_id), "the open stream ended"
    # the old certificate is refused on a fresh connection too
    channel, stub = _mtls_stub(ctl, old.client_key_pem.encode(), old.client_cert_pem.encode())
    with pytest.raises(grpc.RpcError) as err:
        stub.ReportResult(fleet_pb2.ResultReport(), timeout=10)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    # the operator re-enrols the device: a one-use token for exactly this id
    r = httpx.post(f"{base}/devices/{device_id}/reenrol", headers=API)
    assert r.status_code == 201 and r.json()["device_id"] == device_id and r.json()["max_uses"] == 1
    token = r.json()["token"]
    (tmp_path / "agent" / "fleet" / "credentials.json").unlink()
    again = _client(ctl, tmp_path / "agent", token=token)
    again_creds = again.register()
    assert again_creds.device_id == device_id and again_creds.client_cert_pem != old.client_cert_pem
    with pytest.raises(DeviceRefused, match="enrolment refused"):  # one use only
        _client(ctl, tmp_path / "agent3", token=token).register()
    with pytest.raises(grpc.RpcError) as err:  # the pre-revocation certificate stays dead
        stub.ReportResult(fleet_pb2.ResultReport(), timeout=10)
    assert err.value.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)
    channel.close()
    again.close()
    assert [d.id for d in _devices(ctl)] == [device_id] and not _devices(ctl)[0].revoked


def test_enrolment_tokens_expire_run_out_and_are_revoked(ctl, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{ctl.http_port}/api/v1/enrollment-tokens/"
    once = httpx.post(base, json={"name": "site-a", "max_uses": 1}, headers=API).json()
    revoked = httpx.post(base, json={"name": "site-b"}, headers=API).json()
    expired = httpx.post(base, json={"name": "site-c", "expires_in_s": 60}, headers=API).json()
    assert httpx.post(f"{base}{revoked['id']}/revoke", headers=API).json()["revoked"] is True
    with ctl.session() as s:
        row = s.get(EnrollmentToken, expired["id"])
        row.expires_at = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=1)
        s.add(row)
    listed = httpx.get(base, headers=API).json()
    assert {t["name"] for t in listed} == {"site-a", "site-b", "site-c"} and all(
        "token" not in t for t in listed
    )
    assert _client(ctl, tmp_path / "a1", token=once["token"]).register().device_id
    for i, token in enumerate((once["token"], revoked["token"], expired["token"])):
        with pytest.raises(DeviceRefused, match="enrolment refused"):
            _client(ctl, tmp_path / f"b{i}", token=token).register()
    assert len(_devices(ctl)) == 1
