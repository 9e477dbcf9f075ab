"""Model slots under load: switch, failing candidate, corrupt artifact and rollback while
requests keep coming - zero failed requests."""

from __future__ import annotations

import shutil
import threading
import time

import grpc
import numpy as np
import pytest
from agent_testkit import make_artifact

from agent.dataplane import DataPlane
from agent.server import InferenceServer
from agent.slots import ModelSlots
from protos import inference_pb2, inference_pb2_grpc


class Load:
    """Clients hammering ModelInfer over real gRPC; counts answers and failures."""

    def __init__(self, port: int, clients: int = 3) -> None:
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: set[str] = set()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(port,), daemon=True) for _ in range(clients)]

    def _run(self, port: int) -> None:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        x = np.full((2, 3, 16, 16), 0.5, np.float32)
        x[:, 2] = 0.9
        req = inference_pb2.ModelInferRequest(model_name="colour")
        req.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
        req.raw_input_contents.append(x.tobytes())
        while not self.stop.is_set():
            try:
                resp = stub.ModelInfer(req, timeout=10)
                with self._lock:
                    self.ok += 1
                    self.versions.add(resp.model_version)
            except grpc.RpcError as exc:
                with self._lock:
                    self.failures.append(f"{exc.code()}: {exc.details()}")

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        wait_for(lambda: self.ok >= 3)  # every client is in flight before the action
        return self

    def __exit__(self, *exc) -> None:
        served = self.ok
        wait_for(lambda: self.ok >= served + 3)  # and still answered after it
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


def wait_for(condition, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


@pytest.fixture
def setup(artifacts, profile, cache, tmp_path):
    events: list[tuple[str, str, dict]] = []
    slots = ModelSlots(profile=profile, cache=cache, threads=1, state_dir=tmp_path / "slots",
                       on_event=lambda e, v, d: events.append((e, v, d)))  # fmt: skip
    v1 = make_artifact(artifacts, "v1", version="colour:1")
    assert slots.deploy(v1).ok
    server = InferenceServer(DataPlane(slots), host="127.0.0.1", port=0, workers=6).start()
    yield slots, server, events, artifacts
    server.stop()


def test_switch_and_rollback_under_load(setup, images) -> None:
    slots, server, events, artifacts = setup
    v2 = make_artifact(artifacts, "v2", version="colour:2", seed=3)
    with Load(server.port) as load:
        result = slots.deploy(v2, eval_dir=images, accuracy_floor=0.9)
        assert result.ok and result.activated and result.accuracy["top1"] == 1.0
        assert slots.active.version == "colour:2" and slots.previous.version == "colour:1"
        wait_for(lambda: "colour:2" in load.versions)
        slots.rollback(reason="test")
        served = load.ok
        wait_for(lambda: load.ok > served + 3)
    assert not load.failures, load.failures[:3]
    assert load.versions == {"colour:1", "colour:2"}
    assert slots.active.version == "colour:1"
    assert [e for e, _, _ in events if e in ("switched", "rolled_back")] == [
        "switched",
        "switched",
        "rolled_back",
    ]


def test_failing_candidate_is_dropped_active_keeps_serving(setup, images) -> None:
    slots, server, events, artifacts = setup
    bad = make_artifact(artifacts, "bad", version="colour:bad", scrambled=True)
    with Load(server.port) as load:
        result = slots.deploy(bad, eval_dir=images, accuracy_floor=0.9)
    assert not result.ok and "below the floor" in result.reason
    assert not load.failures and load.ok > 0 and load.versions == {"colour:1"}
    assert slots.active.version == "colour:1" and slots.candidate is None
    assert events[-1][0] == "deploy_failed" and events[-1][1] == "colour:bad"


def test_corrupt_artifact_is_refused(setup, tmp_path) -> None:
    slots, server, events, artifacts = setup
    good = make_artifact(artifacts, "v3", version="colour:3", seed=5)
    broken = tmp_path / "broken"
    shutil.copytree(good.parent, broken)
    data = (broken / "model.onnx").read_bytes()
    (broken / "model.onnx").write_bytes(data[: len(data) // 2])  # truncated download
    with Load(server.port) as load:
        result = slots.deploy(broken / "model.onnx")
    assert not result.ok and "sha256 mismatch" in result.reason
    assert not load.failures and slots.active.version == "colour:1"
    assert events[-1][0] == "deploy_failed"


def test_candidate_without_activation_then_switch(setup) -> None:
    slots, server, events, artifacts = setup
    v4 = make_artifact(artifacts, "v4", version="colour:4", seed=9)
    result = slots.deploy(v4, activate=False)
    assert result.ok and not result.activated
    assert slots.active.version == "colour:1" and slots.candidate.version == "colour:4"
    slots.switch("colour:4")
    assert slots.active.version == "colour:4" and slots.candidate is None


def test_state_survives_restart(setup, profile, cache) -> None:
    slots, server, events, artifacts = setup
    slots.deploy(make_artifact(artifacts, "v5", version="colour:5", seed=11))
    again = ModelSlots(profile=profile, cache=cache, state_dir=slots.state_dir)
    assert again.restore().version == "colour:5"
    assert again.previous.version == "colour:1"
    assert again.active.built.cache_hit


@pytest.mark.parametrize("with_eval", [False, True])
def test_static_batch_model_passes_the_health_check(artifacts, profile, cache, images, with_eval) -> None:
    """A graph fixed at batch 8 (the evaluation batch too): the health check sends exactly 8 rows,
    with or without an evaluation folder, and evaluation pads the short last batch (18 images)."""
    from agent.backends.base import fixed_batch
    from agent.evaluate import evaluate

    path = make_artifact(artifacts, "static8", version="colour:static8", batch=8)
    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    result = slots.deploy(
        path, eval_dir=images if with_eval else None, accuracy_floor=0.9 if with_eval else 0.0
    )
    assert result.ok, result.reason
    engine = slots.active.engine
    assert engine.fixed_batch == 8 == fixed_batch(slots.active.manifest.inputs[0].shape)
    assert evaluate(engine, slots.active.manifest, images) == {"top1": 1.0}
