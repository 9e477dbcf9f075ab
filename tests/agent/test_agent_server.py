"""Open Inference Protocol over real gRPC on loopback, including malformed requests."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import numpy as np
import pytest

from agent.dataplane import DataPlane
from agent.server import InferenceServer
from agent.slots import ModelSlots
from protos import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def served(model_path, profile, cache):
    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    assert slots.deploy(model_path).ok
    server = InferenceServer(DataPlane(slots), host="127.0.0.1", port=0).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield inference_pb2_grpc.GRPCInferenceServiceStub(channel), server, slots
    channel.close()
    server.stop()


def infer_request(batch: np.ndarray, name: str = "images", model: str = "colour", datatype: str = "FP32"):
    req = inference_pb2.ModelInferRequest(model_name=model, id="req-1")
    req.inputs.add(name=name, datatype=datatype, shape=list(batch.shape))
    req.raw_input_contents.append(batch.tobytes())
    return req


def solid(colour: tuple[float, float, float], n: int = 1) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32)[None, :, None, None], (n, 3, 16, 16)).copy()


def test_health_and_metadata(served) -> None:
    stub, _, slots = served
    assert stub.ServerLive(inference_pb2.ServerLiveRequest()).live
    assert stub.ServerReady(inference_pb2.ServerReadyRequest()).ready
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="colour")).ready
    assert stub.ModelReady(inference_pb2.ModelReadyRequest(name="colour", version="dynamic")).ready
    assert not stub.ModelReady(inference_pb2.ModelReadyRequest(name="other")).ready
    meta = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="colour"))
    assert meta.versions == [slots.active.version] and meta.platform == "edgeloop_onnxruntime"
    assert meta.inputs[0].name == "images" and meta.inputs[0].datatype == "FP32"
    assert list(meta.inputs[0].shape) == [-1, 3, 16, 16]
    assert stub.ServerMetadata(inference_pb2.ServerMetadataRequest()).name == "edgeloop-agent"


def test_infer_raw_and_typed_contents(served) -> None:
    stub, _, _ = served
    batch = np.concatenate([solid((0.9, 0.1, 0.1)), solid((0.1, 0.9, 0.1)), solid((0.1, 0.1, 0.9))])
    resp = stub.ModelInfer(infer_request(batch))
    assert resp.id == "req-1" and resp.outputs[0].name == "logits" and list(resp.outputs[0].shape) == [3, 3]
    logits = np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(3, 3)
    assert logits.argmax(1).tolist() == [2, 1, 0]  # red, green, blue in label order (blue, green, red)
    typed = inference_pb2.ModelInferRequest(model_name="colour")
    t = typed.inputs.add(name="images", datatype="FP32", shape=[1, 3, 16, 16])
    t.contents.fp32_contents.extend(solid((0.1, 0.9, 0.1)).ravel().tolist())
    out = stub.ModelInfer(typed)
    assert np.frombuffer(out.raw_output_contents[0], np.float32).argmax() == 1


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: r.inputs[0].__setattr__("name", "pixels"), "unknown ['pixels']"),
        (lambda r: r.inputs[0].__setattr__("datatype", "INT32"), "datatype INT32 given"),
        (lambda r: r.inputs[0].__setattr__("datatype", "NOPE"), "unsupported datatype"),
        (lambda r: r.inputs[0].shape.__setitem__(2, 15), "shape"),
        (lambda r: r.inputs[0].shape.pop(), "raw bytes"),
        (lambda r: r.raw_input_contents.__setitem__(0, b"\x00" * 10), "raw bytes"),
        (lambda r: r.raw_input_contents.append(b"\x00"), "raw_input_contents"),
        (lambda r: r.outputs.add(name="nope"), "requested outputs"),
        (lambda r: r.inputs[0].__setattr__("datatype", "FP16"), "raw bytes"),
    ],
)
def test_malformed_requests_are_invalid_argument_and_server_stays_up(served, mutate, message) -> None:
    stub, _, _ = served
    req = infer_request(solid((0.5, 0.5, 0.5), 2))
    mutate(req)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()
    assert stub.ModelInfer(infer_request(solid((0.1, 0.1, 0.9)))).outputs[0].name == "logits"


def test_unknown_model_is_not_found(served) -> None:
    stub, _, _ = served
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(infer_request(solid((0.5, 0.5, 0.5)), model="other"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name="colour", version="9"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_no_active_model_is_unavailable(profile, cache) -> None:
    server = InferenceServer(
        DataPlane(ModelSlots(profile=profile, cache=cache)), host="127.0.0.1", port=0
    ).start()
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        assert not stub.ServerReady(inference_pb2.ServerReadyRequest()).ready
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(infer_request(solid((0.5, 0.5, 0.5))))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


TRITON_CLIENT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import tritonclient.grpc as tc
    client = tc.InferenceServerClient(url=sys.argv[1])
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("colour")
    meta = client.get_model_metadata("colour")
    assert meta.inputs[0].name == "images", meta
    x = np.zeros((2, 3, 16, 16), np.float32); x[:, 0] = 0.9
    inp = tc.InferInput("images", list(x.shape), "FP32"); inp.set_data_from_numpy(x)
    res = client.infer("colour", [inp], outputs=[tc.InferRequestedOutput("logits")])
    assert res.as_numpy("logits").argmax(1).tolist() == [2, 2]
    bad = tc.InferInput("images", [1, 3, 8, 8], "FP32"); bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    try:
        client.infer("colour", [bad])
    except tc.InferenceServerException as exc:
        assert "INVALID_ARGUMENT" in str(exc.status()), exc.status()
    else:
        raise SystemExit("malformed request accepted")
    stats = client.get_inference_statistics("colour").model_stats[0]  # the statistics extension
    assert (stats.inference_stats.success.count, stats.inference_stats.fail.count) == (1, 1), stats
    assert stats.inference_count == 2 and [b.batch_size for b in stats.batch_stats] == [2], stats
    index = client.get_model_repository_index().models  # the repository extension
    assert [(m.name, m.state) for m in index] == [("colour", "READY")], index
    try:
        client.unload_model("colour")  # the only model: refused
    except tc.InferenceServerException as exc:
        assert "FAILED_PRECONDITION" in str(exc.status()) and "only model" in exc.message(), exc
    else:
        raise SystemExit("unloaded the only model")
    print("tritonclient ok")
    """
)


def test_unmodified_tritonclient(served, tmp_path) -> None:
    """tritonclient registers its own `inference` protos, so it runs in its own process."""
    _, server, _ = served
    env = dict(os.environ)
    if os.environ.get("EDGELOOP_TRITONCLIENT_PATH"):  # a --target install beside the venv
        env["PYTHONPATH"] = os.environ["EDGELOOP_TRITONCLIENT_PATH"]
    probe = subprocess.run([sys.executable, "-c", "import tritonclient.grpc"], env=env, capture_output=True)
    if probe.returncode != 0:
        pytest.skip("tritonclient[grpc] is not installed (pip install tritonclient[grpc] to run this check)")
    script = tmp_path / "client.py"
    script.write_text(TRITON_CLIENT)
    proc = subprocess.run([sys.executable, str(script), f"127.0.0.1:{server.port}"], env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "tritonclient ok" in proc.stdout
