"""The executor the fleet daemon drives: deploy/benchmark/calibrate/switch/rollback with shards
arriving as .tar files, reports as fleet_pb2 messages, live inference while it works."""

from __future__ import annotations

import tarfile

import grpc
import pytest
from agent_testkit import make_artifact

from agent.bench import BenchConfig
from agent.errors import AgentError
from agent.fleet.executor import Shards
from agent.fleet_executor import create_executor
from protos import fleet_pb2, inference_pb2, inference_pb2_grpc


@pytest.fixture
def executor(tmp_path):
    ex = create_executor(tmp_path / "agent", threads=1, serve_port=0,
                         deploy_bench=BenchConfig(scenarios=("singlestream",), duration_ms=100, min_queries=8))  # fmt: skip
    yield ex
    ex.close()


@pytest.fixture
def shard(images, tmp_path):
    path = tmp_path / "shard.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(images, arcname="images")
    return path


def _args(onnx_path):
    return {"onnx_path": onnx_path, "manifest_json": (onnx_path.parent / "manifest.json").read_text()}


def test_deploy_benchmark_switch_rollback(executor, artifacts, shard) -> None:
    v1 = make_artifact(artifacts, "fx1", version="colour:fx1")
    report = executor.deploy(**_args(v1), shards=Shards(calibration=shard, evaluation=shard),
                             command=fleet_pb2.Deploy(precision="int8", activate=True, accuracy_floor=0.9))  # fmt: skip
    assert report.accuracy["top1"] == 1.0 and report.precision == "int8" and report.calibration_time_s > 0
    assert report.scenarios[0].scenario == "singlestream" and report.engine_key
    assert executor.state().active == "colour:fx1"

    stub = inference_pb2_grpc.GRPCInferenceServiceStub(
        grpc.insecure_channel(f"127.0.0.1:{executor.server.port}")
    )
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="colour")).ready

    reports = executor.benchmark(**_args(v1), shards=Shards(evaluation=shard), command=fleet_pb2.Benchmark(
        backends=["onnxruntime", "tensorrt"], precisions=["fp32"], scenarios=["offline"], duration_ms=100,
        round_id="r1"))  # fmt: skip
    ort, trt = reports
    assert ort.scenarios[0].scenario == "offline" and ort.accuracy["top1"] == 1.0 and ort.round_id == "r1"
    assert not trt.scenarios and "tensorrt" in trt.errors[0].lower()

    v2 = make_artifact(artifacts, "fx2", version="colour:fx2", seed=4)
    executor.deploy(**_args(v2), shards=Shards(), command=fleet_pb2.Deploy(activate=False))
    assert executor.state().candidate == "colour:fx2"
    assert executor.switch("colour:fx2") == "colour:fx2"
    assert executor.rollback() == "colour:fx1"
    assert "colour:fx1" in executor.state().cached


def test_failing_deploy_raises_and_keeps_serving(executor, artifacts, shard) -> None:
    v1 = make_artifact(artifacts, "fx3", version="colour:fx3")
    executor.deploy(**_args(v1), shards=Shards(), command=fleet_pb2.Deploy(activate=True))
    bad = make_artifact(artifacts, "fx4", version="colour:fx4", scrambled=True)
    with pytest.raises(AgentError, match="below the floor"):
        executor.deploy(**_args(bad), shards=Shards(evaluation=shard),
                        command=fleet_pb2.Deploy(activate=True, accuracy_floor=0.9))  # fmt: skip
    assert executor.state().active == "colour:fx3"


def test_calibrate_builds_without_activating(executor, artifacts, shard) -> None:
    v = make_artifact(artifacts, "fx5", version="colour:fx5")
    report = executor.calibrate(**_args(v), shards=Shards(calibration=shard),
                                command=fleet_pb2.Calibrate(precision="int8"))  # fmt: skip
    assert report.calibration_time_s > 0 and report.precision == "int8"
    assert executor.state().active == ""


def test_events_after_attach_telemetry(executor, artifacts, mqtt_broker) -> None:
    from test_agent_telemetry import Subscriber

    sub = Subscriber(mqtt_broker.url, "fleet/devices/dev-42/events")
    try:
        executor.attach_telemetry("dev-42", mqtt_broker.url, "fleet")  # after Register
        v = make_artifact(artifacts, "fx6", version="colour:fx6")
        executor.deploy(**_args(v), shards=Shards(), command=fleet_pb2.Deploy(activate=True))
        sub.wait(lambda m: m[1]["event"] == "built" and m[1]["model_version"] == "colour:fx6")
        sub.wait(lambda m: m[1]["event"] == "switched")
    finally:
        sub.close()
