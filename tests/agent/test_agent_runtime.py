"""The agent runtime that `agent serve` and `agent run` build: the device work the fleet daemon
drives (deploy/benchmark/calibrate/switch/rollback with shards arriving as .tar files, reports as
fleet_pb2 messages, live inference while it works), its lifecycle (nothing runs before start(),
nothing is left after close()) and dynamic batching in fleet mode."""

from __future__ import annotations

import socket
import tarfile
import threading

import grpc
import numpy as np
import pytest
from agent_testkit import make_artifact

from agent.bench import BenchConfig
from agent.config import AgentSettings
from agent.errors import AgentError
from agent.runtime import AgentRuntime
from agent.shards import Shards
from controller.broker import free_port
from protos import fleet_pb2, inference_pb2, inference_pb2_grpc

QUICK = BenchConfig(scenarios=("singlestream",), duration_ms=100, min_queries=8)


@pytest.fixture
def executor(tmp_path):
    runtime = AgentRuntime(
        AgentSettings(agent_dir=tmp_path / "agent", threads=1, serve_port=0, http_port=-1), deploy_bench=QUICK
    )
    yield runtime.start()
    runtime.close()


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
        grpc.insecure_channel(f"127.0.0.1:{executor.grpc_server.port}")
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


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _infer(port: int, x: np.ndarray):
    stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
    req = inference_pb2.ModelInferRequest(model_name="colour")
    req.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return stub.ModelInfer.future(req, timeout=30)


def test_nothing_runs_before_start_and_nothing_after_close(tmp_path) -> None:
    port = free_port()
    threads = threading.active_count()
    runtime = AgentRuntime(AgentSettings(agent_dir=tmp_path / "a", threads=1, serve_host="127.0.0.1",
                                         serve_port=port, http_port=0, batch_delay_ms=5), deploy_bench=None)  # fmt: skip
    assert not _listening(port) and threading.active_count() == threads
    assert runtime.served == [] and runtime.dataplane.batcher is None
    with runtime:
        assert _listening(port) and runtime.served == [runtime.grpc_server, runtime.http_server]
        assert runtime.dataplane.batcher is not None
    assert not _listening(port) and runtime.served == [] and runtime.dataplane.batcher is None


def test_a_port_in_use_fails_start_and_leaves_nothing_running(tmp_path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        runtime = AgentRuntime(AgentSettings(agent_dir=tmp_path / "a", serve_host="127.0.0.1", serve_port=port,
                                             http_port=-1, batch_delay_ms=5), deploy_bench=None)  # fmt: skip
        with pytest.raises((OSError, RuntimeError), match=str(port)):
            runtime.start()
        assert not runtime.started and runtime.served == [] and runtime.dataplane.batcher is None


def test_fleet_mode_batches_concurrent_requests(tmp_path, artifacts) -> None:
    """What only `agent serve` had: dynamic batching, now from the settings of either command."""
    settings = AgentSettings(agent_dir=tmp_path / "a", threads=1, serve_host="127.0.0.1", serve_port=0,
                             http_port=-1, batch_delay_ms=200, max_batch=8)  # fmt: skip
    with AgentRuntime(settings, deploy_bench=None) as runtime:
        v = make_artifact(artifacts, "fxb", version="colour:fxb")
        runtime.deploy(**_args(v), shards=Shards(), command=fleet_pb2.Deploy(activate=True))
        x = np.zeros((1, 3, 16, 16), np.float32)
        x[:, 2] = 0.9
        futures = [_infer(runtime.grpc_server.port, x) for _ in range(6)]
        answers = [f.result() for f in futures]
        assert {a.model_version for a in answers} == {"colour:fxb"}
        assert all(np.frombuffer(a.raw_output_contents[0], np.float32).argmax() == 0 for a in answers)  # blue
        assert 1 <= runtime.dataplane.batcher.batches_run < 6  # requests shared engine runs
        assert runtime.stats.requests == 6 and runtime.stats.failed == 0


def test_restart_restores_the_slots(tmp_path, artifacts) -> None:
    settings = AgentSettings(agent_dir=tmp_path / "a", threads=1, serve_port=-1, http_port=-1)
    with AgentRuntime(settings, deploy_bench=None) as runtime:
        v = make_artifact(artifacts, "fxr", version="colour:fxr")
        runtime.deploy(**_args(v), shards=Shards(), command=fleet_pb2.Deploy(activate=True))
    again = AgentRuntime(settings, deploy_bench=None)
    assert again.state().active == ""  # construction restores nothing ...
    with again:
        assert again.state().active == "colour:fxr" and again.grpc_server is None  # ... start() does


def test_a_deploy_sets_the_models_dynamic_batching_and_a_restart_keeps_it(tmp_path, artifacts) -> None:
    """Fleet mode, per model: the Deploy's batching (not the agent's, which has none) merges
    concurrent requests; the model configuration says so; a restarted agent keeps it."""
    settings = AgentSettings(
        agent_dir=tmp_path / "a", threads=1, serve_host="127.0.0.1", serve_port=0, http_port=-1
    )
    command = fleet_pb2.Deploy(activate=True)
    command.batching.preferred_batch_sizes.extend([4])
    command.batching.max_queue_delay_us = 30_000_000  # only the preferred size ends a batch
    v = make_artifact(artifacts, "fxpb", version="colour:fxpb")
    with AgentRuntime(settings, deploy_bench=None) as runtime:
        assert runtime.dataplane.batcher is None
        runtime.deploy(**_args(v), shards=Shards(), command=command)
        x = np.zeros((1, 3, 16, 16), np.float32)
        x[:, 1] = 0.9
        answers = [f.result() for f in [_infer(runtime.grpc_server.port, x) for _ in range(4)]]
        assert all(
            np.frombuffer(a.raw_output_contents[0], np.float32).argmax() == 1 for a in answers
        )  # green
        (stats,) = runtime.dataplane.statistics("colour")
        assert stats.execution_count == 1 and list(stats.batches) == [4]  # four requests, one run of 4
        config = runtime.dataplane.model_config("colour")
        assert config["dynamic_batching"] == {
            "preferred_batch_size": [4],
            "max_queue_delay_microseconds": 30_000_000,
        }
    with AgentRuntime(settings, deploy_bench=None) as again:
        assert again.dataplane.model_config("colour")["dynamic_batching"]["preferred_batch_size"] == [4]


def test_a_stream_benchmark_without_a_usable_clip_is_refused_naming_why(
    executor, artifacts, shard, tmp_path
) -> None:
    """What a controller (or a forged command) can send: no clip, a clip shard without a video,
    counts out of range. The command fails with the reason; nothing is measured."""
    onnx_path = make_artifact(artifacts, "streamless")
    stream = fleet_pb2.Benchmark(scenarios=["stream"])
    with pytest.raises(AgentError, match=r"scenario 'stream' needs a stream clip"):
        executor.benchmark(**_args(onnx_path), command=stream, shards=Shards())
    with pytest.raises(AgentError, match=r"stream clip shard .* holds no video file"):
        executor.benchmark(**_args(onnx_path), command=stream, shards=Shards(stream_clip=shard))
    clip_tar = tmp_path / "clip.tar"
    (tmp_path / "c.mp4").write_bytes(b"not checked before the counts")
    with tarfile.open(clip_tar, "w") as tar:
        tar.add(tmp_path / "c.mp4", arcname="clip/c.mp4")
    bad_counts = fleet_pb2.Benchmark(scenarios=["stream"], stream_counts=[1, 500])
    with pytest.raises(AgentError, match=r"stream_counts must be 1\.\.64, got \[1, 500\]"):
        executor.benchmark(**_args(onnx_path), command=bad_counts, shards=Shards(stream_clip=clip_tar))
    # a clip that is no video: the report says so (the build and the other scenarios stand)
    (report,) = executor.benchmark(**_args(onnx_path), command=stream, shards=Shards(stream_clip=clip_tar))
    assert report.stream_fps == 0 and any(
        e.startswith("stream: stream clip c.mp4 cannot be read") for e in report.errors
    )
