"""The inference ports as an attacker on loopback sees them: bound to loopback unless opened, a
bearer token when one is set (from a file or the environment, never argv), a batch and size
limit checked before anything is allocated, and shapes whose element count overflows int64
answered INVALID_ARGUMENT (gRPC) / 400 (HTTP), not INTERNAL."""

from __future__ import annotations

import argparse
import json

import grpc
import httpx
import numpy as np
import pytest
from agent_testkit import make_artifact

from agent import cli
from agent.config import AgentSettings
from agent.dataplane import DataPlane, Limits
from agent.http_server import HttpInferenceServer
from agent.runtime import AgentRuntime
from agent.server import InferenceServer
from agent.shards import Shards
from agent.slots import ModelSlots
from protos import fleet_pb2, inference_pb2, inference_pb2_grpc

TOKEN = "s3cret-token-0123456789"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgeloop agent")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def grpc_request(shape: list[int], data: bytes = b"", model: str = "colour"):
    req = inference_pb2.ModelInferRequest(model_name=model)
    req.inputs.add(name="images", datatype="FP32", shape=shape)
    req.raw_input_contents.append(data)
    return req


@pytest.fixture
def slots(model_path, profile, cache):
    s = ModelSlots(profile=profile, cache=cache, threads=1)
    assert s.deploy(model_path).ok
    return s


def test_loopback_unless_opened() -> None:
    assert AgentSettings().serve_host == "127.0.0.1"
    assert AgentSettings.from_env({}).serve_host == "127.0.0.1"
    assert AgentSettings.from_env({"EDGELOOP_SERVE_HOST": "0.0.0.0"}).serve_host == "0.0.0.0"
    s = AgentSettings.from_env({}).override(
        **vars(parse("run", "--serve-host", "0.0.0.0", "--http-port", "0"))
    )
    assert (s.serve_host, s.http_port) == ("0.0.0.0", 0)


def test_runtime_binds_loopback_by_default(tmp_path) -> None:
    with AgentRuntime(
        AgentSettings(agent_dir=tmp_path / "a", serve_port=0, http_port=0), deploy_bench=None
    ) as rt:
        assert rt.grpc_server.host == "127.0.0.1" and rt.http_server.host == "127.0.0.1"
        assert rt.http_server._socket.getsockname()[0] == "127.0.0.1"


def test_the_token_never_comes_from_argv(tmp_path) -> None:
    with pytest.raises(SystemExit):
        parse("run", "--serve-token", TOKEN)  # no such flag, and no abbreviation of --serve-token-file
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    s = AgentSettings.from_env({}).override(
        **vars(parse("serve", "m.onnx", "--serve-token-file", str(token_file)))
    )
    assert s.inference_token() == TOKEN and TOKEN not in repr(s)
    assert AgentSettings.from_env({"EDGELOOP_SERVE_TOKEN": TOKEN}).inference_token() == TOKEN
    assert AgentSettings.from_env({"EDGELOOP_SERVE_TOKEN_FILE": str(token_file)}).inference_token() == TOKEN
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValueError, match="is empty"):
        AgentSettings(serve_token_file=tmp_path / "empty").inference_token()
    with pytest.raises(ValueError, match="serve token file"):
        AgentSettings(serve_token_file=tmp_path / "missing").inference_token()
    assert AgentSettings().inference_token() is None  # open unless set


def test_grpc_token(slots) -> None:
    server = InferenceServer(DataPlane(slots), port=0, token=TOKEN).start()
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        x = np.zeros((1, 3, 16, 16), np.float32)
        assert stub.ServerLive(inference_pb2.ServerLiveRequest()).live  # probes need no secret
        for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", TOKEN),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelInfer(grpc_request([1, 3, 16, 16], x.tobytes()), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.RpcError) as err:
                stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="colour"), metadata=metadata)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.ModelInfer(
            grpc_request([1, 3, 16, 16], x.tobytes()), metadata=(("authorization", f"Bearer {TOKEN}"),)
        )
        assert ok.outputs[0].name == "logits"
        assert slots.active is not None and DataPlane(slots).ready()
    finally:
        server.stop()


def test_http_token(slots) -> None:
    server = HttpInferenceServer(DataPlane(slots), port=0, token=TOKEN).start()
    try:
        client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}")
        assert client.get("/v2/health/ready").status_code == 200
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            for path in ("/v2/models/colour", "/metrics", "/v2/models/stats"):
                r = client.get(path, headers=headers)
                assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
        r = client.get("/v2/models/colour", headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status_code == 200
    finally:
        server.stop()


@pytest.mark.parametrize(
    ("shape", "message"),
    [
        ([65536, 3, 16, 16], "batch 65536 exceeds this agent's maximum 64"),
        ([1, 2**40, 2**40, 16], "over this agent's maximum request"),  # element count overflows int64
        ([1, 2**62, 2**62, 2**62], "over this agent's maximum request"),
        ([1, -3, 16, 16], "negative dimension"),
    ],
)
def test_oversized_and_overflowing_shapes_are_invalid_argument(slots, shape, message) -> None:
    dataplane = DataPlane(slots)
    server = InferenceServer(dataplane, port=0).start()
    http = HttpInferenceServer(dataplane, port=0).start()
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(grpc_request(shape, b"\x00" * 16))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": shape, "data": [0.0]}]}
        r = httpx.post(f"http://127.0.0.1:{http.port}/v2/models/colour/infer", json=body)
        assert r.status_code == 400 and message in r.json()["error"]
        x = np.zeros((1, 3, 16, 16), np.float32)
        assert stub.ModelInfer(grpc_request([1, 3, 16, 16], x.tobytes())).outputs[0].name == "logits"
    finally:
        http.stop()
        server.stop()


def test_request_size_limits(slots) -> None:
    dataplane = DataPlane(slots, limits=Limits(max_batch=64, max_bytes=64 * 1024))
    server = InferenceServer(dataplane, port=0).start()
    http = HttpInferenceServer(dataplane, port=0).start()
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        x = np.zeros((32, 3, 16, 16), np.float32)  # 96 KiB of valid input, over the 64 KiB limit
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(grpc_request(list(x.shape), x.tobytes()))
        assert (
            err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "maximum request" in err.value.details()
        )
        huge = b"\x00" * (2 * 1024 * 1024)  # over the message limit: refused by gRPC before decoding
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(grpc_request([1, 3, 16, 16], huge))
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        r = httpx.post(f"http://127.0.0.1:{http.port}/v2/models/colour/infer", content=huge)
        assert r.status_code == 413 and "limit" in r.json()["error"]
        small = np.zeros((1, 3, 16, 16), np.float32)
        assert stub.ModelInfer(grpc_request([1, 3, 16, 16], small.tobytes())).outputs[0].name == "logits"
    finally:
        http.stop()
        server.stop()


def test_manifest_max_batch_lowers_the_limit(tmp_path, artifacts) -> None:
    """A manifest's max_batch (the exporter knows the model) beats the agent's larger limit."""
    settings = AgentSettings(
        agent_dir=tmp_path / "a", threads=1, serve_port=0, http_port=-1, max_request_batch=64
    )
    with AgentRuntime(settings, deploy_bench=None) as runtime:
        v = make_artifact(artifacts, "mb4", version="colour:mb4")
        manifest = json.dumps(json.loads((v.parent / "manifest.json").read_text()) | {"max_batch": 4})
        runtime.deploy(
            onnx_path=v, manifest_json=manifest, shards=Shards(), command=fleet_pb2.Deploy(activate=True)
        )
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{runtime.grpc_server.port}")
        )
        x = np.zeros((5, 3, 16, 16), np.float32)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(grpc_request(list(x.shape), x.tobytes()))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch 5 exceeds the model's maximum 4" in err.value.details()
        assert stub.ModelInfer(grpc_request([4, 3, 16, 16], x[:4].tobytes())).outputs[0].shape[0] == 4
