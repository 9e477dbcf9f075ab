"""Finding 2: a device speaks only for itself. Each attack comes from a real enrolled agent's
own, valid credentials, aimed at another device's command or artifact; each is refused and
nothing is stored."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from ctl_helpers import make_controller, manifest_json, start_agent, write_onnx
from sqlmodel import select

from agent.fleet.download import DownloadInterrupted, download_artifact
from controller import crud
from controller.models import Command, CommandState, Result
from controller.services.artifacts import artifact_ref
from protos import fleet_pb2

TOKEN = "test-enrollment-token"


@pytest.fixture
def fleet(tmp_path: Path):
    ctl = make_controller(tmp_path / "data", f"sqlite:///{tmp_path / 'c.db'}")
    mv = ctl.import_model(write_onnx(tmp_path / "m1.onnx", "v1"), manifest_json("tiny:1"))
    other = ctl.import_model(write_onnx(tmp_path / "m2.onnx", "v2"), manifest_json("tiny:2"))
    victim = start_agent(ctl.grpc_target, tmp_path / "victim", TOKEN, name="victim")
    attacker = start_agent(ctl.grpc_target, tmp_path / "attacker", TOKEN, name="attacker")
    try:
        yield ctl, victim, attacker, mv, other
    finally:
        attacker.stop()
        victim.stop()
        ctl.stop()


def _report(command_id: str, version: str = "tiny:1", **fields: object) -> fleet_pb2.ResultReport:
    return fleet_pb2.ResultReport(
        report=fleet_pb2.Report(
            command_id=command_id, model_version=version, backend="onnxruntime", precision="fp32",
            accuracy={"top1": 0.99}, **fields,
        )
    )  # fmt: skip


def _results(ctl) -> list[Result]:
    with ctl.session() as s:
        return list(s.exec(select(Result)).all())


def test_report_for_another_devices_command_is_refused(fleet) -> None:
    ctl, victim, attacker, _, _ = fleet
    command_id = ctl.send_benchmark(victim.device_id, {"model_version": "tiny:1"})
    ctl.wait_for_commands([command_id], timeout_s=30)
    before = _results(ctl)
    with pytest.raises(grpc.RpcError) as err:
        attacker.client.stub.ReportResult(_report(command_id), metadata=attacker.client.metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "not sent to this device" in err.value.details()
    assert len(_results(ctl)) == len(before), "nothing stored"
    assert all(r.device_id == victim.device_id for r in _results(ctl))


def test_results_without_a_command_or_for_another_model_are_refused(fleet) -> None:
    ctl, _, attacker, _, _ = fleet
    for request, why in (
        (_report(""), "must name the command"),
        (_report("no-such-command"), "not sent to this device"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            attacker.client.stub.ReportResult(request, metadata=attacker.client.metadata)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and why in err.value.details()
    # its own command, but results for a model it was never asked to measure
    command_id = ctl.send_benchmark(attacker.device_id, {"model_version": "tiny:1"})
    ctl.wait_for_commands([command_id], timeout_s=30)
    n = len(_results(ctl))
    with pytest.raises(grpc.RpcError) as err:
        attacker.client.stub.ReportResult(_report(command_id, "tiny:2"), metadata=attacker.client.metadata)
    assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED and "tiny:2" in err.value.details()
    assert len(_results(ctl)) == n


def test_status_for_another_devices_command_is_ignored(fleet) -> None:
    ctl, victim, attacker, _, _ = fleet
    victim.stop()  # the victim's command stays open, so a forged final status would matter
    command_id = ctl.send_benchmark(victim.device_id, {"model_version": "tiny:1"})
    attacker.client.send_status(command_id, "failed", "forged by the attacker", progress=1.0)
    # the attacker's stream stays usable, and an own command goes through after the forged status
    own = ctl.send_benchmark(attacker.device_id, {"model_version": "tiny:1"})
    ctl.wait_for_commands([own], timeout_s=30)
    with ctl.session() as s:
        cmd = s.get(Command, command_id)
        assert cmd.state == CommandState.pending and "forged" not in cmd.message


def test_download_of_an_artifact_not_sent_is_refused(fleet, tmp_path: Path) -> None:
    ctl, victim, attacker, mv, other = fleet
    sent = ctl.send_benchmark(victim.device_id, {"model_version": "tiny:2"})
    ctl.wait_for_commands([sent], timeout_s=30)
    served = ctl.ctx.metrics.bytes_served._value.get()
    with ctl.session() as s:
        ref = artifact_ref(crud.get_artifact(session=s, artifact_id=other.artifact_id), other.version)
    with pytest.raises(DownloadInterrupted, match="PERMISSION_DENIED"):
        download_artifact(
            attacker.client.stub, ref, tmp_path / "loot", attacker.client.credentials.public_key,
            metadata=attacker.client.metadata,
        )  # fmt: skip
    assert ctl.ctx.metrics.bytes_served._value.get() == served, "not one byte served"
    assert not (tmp_path / "loot" / f"{ref.sha256}.onnx").exists()


@pytest.mark.parametrize(
    "fields",
    [
        {"errors": ["x" * (12 << 20)]},  # the 12 MiB error field of the finding
        {"errors": ["e"] * 1000},
        {"backend": "b" * 10_000},
        {"accuracy": {f"m{i}": 0.5 for i in range(500)}},
    ],
    ids=["huge-error", "many-errors", "long-backend", "many-metrics"],
)
def test_oversized_report_fields_are_refused(fleet, fields: dict) -> None:
    ctl, _, attacker, _, _ = fleet
    command_id = ctl.send_benchmark(attacker.device_id, {"model_version": "tiny:1"})
    ctl.wait_for_commands([command_id], timeout_s=30)
    n = len(_results(ctl))
    request = _report(command_id)
    for key, value in fields.items():
        field = getattr(request.report, key)
        if isinstance(value, dict):
            field.update(value)
        elif isinstance(value, list):
            field.extend(value)
        else:
            setattr(request.report, key, value)
    with pytest.raises(grpc.RpcError) as err:
        attacker.client.stub.ReportResult(request, metadata=attacker.client.metadata)
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert len(_results(ctl)) == n, "nothing stored"
