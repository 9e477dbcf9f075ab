"""Artifact delivery to a real agent: deploy, resume an interrupted download, refuse corrupt or
badly signed bytes (deleted, running model untouched)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ctl_helpers import ScriptedExecutor, manifest_json, start_agent, wait_until, write_onnx

from agent.fleet.download import ArtifactRejected, download_artifact
from controller import crud
from controller.models import Artifact, RolloutState
from controller.services.artifacts import artifact_ref

TOKEN = "test-enrollment-token"


def _deploy(ctl, device_id: str, version: str, **strategy) -> object:
    r = ctl.create_rollout(
        {
            "model_version": version,
            "selector": {"device_ids": [device_id]},
            "strategy": {
                "canary_share": 0,
                "waves": 1,
                "max_accuracy_drop": None,
                "min_fps_ratio": None,
                **strategy,
            },
        }
    )
    return ctl.wait_for_rollout(r.id, timeout_s=30)


def test_deploy_reaches_the_device(controller, tmp_path: Path) -> None:
    controller.import_model(write_onnx(tmp_path / "m1.onnx", "v1"), manifest_json("tiny:1"))
    agent = start_agent(controller.grpc_target, tmp_path / "agent", TOKEN)
    try:
        done = _deploy(controller, agent.device_id, "tiny:1")
        assert done.state == RolloutState.succeeded, done
        assert agent.executor.active == "tiny:1"
        on_disk = list((tmp_path / "agent" / "artifacts").glob("*.onnx"))
        assert len(on_disk) == 1 and not list((tmp_path / "agent" / "artifacts").glob("*.part"))
        wait_until(
            lambda: controller.list_devices()[0].active_version == "tiny:1", 10, "active version recorded"
        )
        results = controller.list_results(device_id=agent.device_id)
        assert (
            results and results[0].accuracy == pytest.approx(90.0) and results[0].fps == pytest.approx(100.0)
        )
    finally:
        agent.stop()


def test_interrupted_download_resumes_from_the_bytes_on_disk(controller, tmp_path: Path) -> None:
    mv = controller.import_model(
        write_onnx(tmp_path / "big.onnx", "big", pad_bytes=1 << 20), manifest_json("tiny:big")
    )
    agent = start_agent(controller.grpc_target, tmp_path / "agent", TOKEN)
    try:
        # a device may only download what a command sent it: benchmark the model first
        command_id = controller.send_benchmark(agent.device_id, {"model_version": "tiny:big"})
        controller.wait_for_commands([command_id], timeout_s=30)
        with controller.session() as s:
            ref = artifact_ref(crud.get_artifact(session=s, artifact_id=mv.artifact_id), mv.version)
        dest = tmp_path / "dl"
        creds = agent.client.credentials

        class Cut(Exception):
            pass

        def cut(done: int, total: int) -> None:
            if done >= 256 * 1024:
                raise Cut

        served0 = controller.ctx.metrics.bytes_served._value.get()
        with pytest.raises(Cut):
            download_artifact(
                agent.client.stub,
                ref,
                dest,
                creds.public_key,
                metadata=agent.client.metadata,
                chunk_size=64 * 1024,
                on_progress=cut,
            )
        part = dest / f"{ref.sha256}.onnx.part"
        kept = part.stat().st_size
        assert 0 < kept < ref.size_bytes
        result = download_artifact(
            agent.client.stub,
            ref,
            dest,
            creds.public_key,
            metadata=agent.client.metadata,
            chunk_size=64 * 1024,
        )
        assert result.resumed_from == kept and result.bytes_received == ref.size_bytes - kept
        assert not part.exists() and result.path.stat().st_size == ref.size_bytes
        served = controller.ctx.metrics.bytes_served._value.get() - served0
        # the controller served the first part once and the rest once (plus what was in flight at the cut)
        assert served < 2 * ref.size_bytes, "the resume must not fetch the whole file again"
    finally:
        agent.stop()


def test_corrupt_artifact_is_refused_deleted_and_the_running_model_kept(controller, tmp_path: Path) -> None:
    controller.import_model(write_onnx(tmp_path / "m1.onnx", "v1"), manifest_json("tiny:1"))
    mv2 = controller.import_model(
        write_onnx(tmp_path / "m2.onnx", "v2"), manifest_json("tiny:2", parent="tiny:1")
    )
    agent = start_agent(controller.grpc_target, tmp_path / "agent", TOKEN, executor=ScriptedExecutor())
    try:
        assert _deploy(controller, agent.device_id, "tiny:1").state == RolloutState.succeeded
        with controller.session() as s:
            stored = Path(crud.get_artifact(session=s, artifact_id=mv2.artifact_id).path)
        data = bytearray(stored.read_bytes())
        data[len(data) // 2] ^= 0xFF  # bit rot on the controller's disk: same size, other bytes
        stored.write_bytes(bytes(data))
        done = _deploy(controller, agent.device_id, "tiny:2")
        assert done.state == RolloutState.aborted
        assert "artifact refused: sha256 mismatch" in done.deployments[0].message
        assert agent.executor.active == "tiny:1", "the running model must stay"
        assert ("deploy", "tiny:2") not in agent.executor.calls, "a refused artifact never reaches the engine"
        arts = tmp_path / "agent" / "artifacts"
        assert not list(arts.glob(f"{mv2.sha256}*")), "the corrupt bytes are deleted"
    finally:
        agent.stop()


def test_badly_signed_artifact_is_refused_before_download(controller, tmp_path: Path) -> None:
    mv = controller.import_model(write_onnx(tmp_path / "m1.onnx", "v1"), manifest_json("tiny:1"))
    agent = start_agent(controller.grpc_target, tmp_path / "agent", TOKEN)
    try:
        forged = Ed25519PrivateKey.generate().sign(bytes.fromhex(mv.sha256)).hex()
        with controller.session() as s:
            art = s.get(Artifact, mv.artifact_id)
            art.signature = forged
            s.add(art)
        served0 = controller.ctx.metrics.bytes_served._value.get()
        done = _deploy(controller, agent.device_id, "tiny:1")
        assert done.state == RolloutState.aborted
        assert "bad signature" in done.deployments[0].message
        assert agent.executor.active == "" and not agent.executor.calls
        assert controller.ctx.metrics.bytes_served._value.get() == served0, (
            "nothing is fetched for a bad signature"
        )
        assert not list((tmp_path / "agent" / "artifacts").glob("*"))
        with controller.session() as s:
            ref = artifact_ref(crud.get_artifact(session=s, artifact_id=mv.artifact_id), mv.version)
        with pytest.raises(ArtifactRejected, match="bad signature"):
            download_artifact(
                agent.client.stub,
                ref,
                tmp_path / "x",
                agent.client.credentials.public_key,
                metadata=agent.client.metadata,
            )
    finally:
        agent.stop()
