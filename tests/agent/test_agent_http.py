"""Open Inference Protocol over real HTTP on loopback (uvicorn), with unmodified tritonclient.http,
curl-style raw bodies, the statistics and repository extensions and the /metrics page; against
a standalone dataplane (what ``agent serve`` builds) and a fleet runtime (``agent run``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from agent_testkit import make_artifact
from prometheus_client.parser import text_string_to_metric_families

from agent.config import AgentSettings
from agent.dataplane import DataPlane
from agent.http_server import HEADER_LENGTH, HttpInferenceServer
from agent.metrics import metric_names, render_metrics
from agent.repository import ModelRepository
from agent.runtime import AgentRuntime
from agent.shards import Shards
from agent.slots import ModelSlots
from protos import fleet_pb2


def solid(colour: tuple[float, float, float], n: int = 1) -> np.ndarray:
    return np.broadcast_to(np.asarray(colour, np.float32)[None, :, None, None], (n, 3, 16, 16)).copy()


def reference(model_path: Path, x: np.ndarray) -> np.ndarray:
    """In-process ONNX Runtime on the same file: what every protocol must answer."""
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": x})[0]


@pytest.fixture
def served(model_path, profile, cache, tmp_path):
    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    assert slots.deploy(model_path).ok
    dataplane = DataPlane(slots)
    repo = tmp_path / "repo"
    make_artifact(repo, "green", version="colour:green")  # another version in the model repository
    dataplane.repository = ModelRepository(slots, repo)
    server = HttpInferenceServer(dataplane, port=0).start()
    client = httpx.Client(base_url=f"http://127.0.0.1:{server.port}", timeout=30)
    yield client, server, dataplane
    client.close()
    server.stop()


def json_infer(x: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "images", "datatype": "FP32", "shape": list(x.shape), "data": x.ravel().tolist()}],
            **extra}  # fmt: skip


def test_health_metadata_and_json_infer_match_onnxruntime(served, model_path) -> None:
    client, _, dataplane = served
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2/models/colour/ready").status_code == 200
    assert client.get("/v2/models/other/ready").status_code == 400
    server = client.get("/v2").json()
    assert server["name"] == "edgeloop-agent" and {"binary_tensor_data", "statistics"} <= set(
        server["extensions"]
    )
    meta = client.get("/v2/models/colour").json()
    assert meta["inputs"] == [{"name": "images", "datatype": "FP32", "shape": [-1, 3, 16, 16]}]
    assert meta["versions"] == [dataplane.slots.active.version]
    x = np.concatenate([solid((0.9, 0.1, 0.1)), solid((0.1, 0.1, 0.9))])
    r = client.post("/v2/models/colour/infer", json=json_infer(x, id="r-7"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "r-7" and body["outputs"][0]["shape"] == [2, 3]
    got = np.asarray(body["outputs"][0]["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, reference(model_path, x), rtol=1e-5, atol=1e-5)


def test_binary_tensor_extension(served, model_path) -> None:
    client, _, _ = served
    x = solid((0.1, 0.9, 0.1), 3)
    header = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [3, 3, 16, 16],
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "outputs": [{"name": "logits", "parameters": {"binary_data": True}}]}).encode()  # fmt: skip
    r = client.post("/v2/models/colour/infer", content=header + x.tobytes(),
                    headers={HEADER_LENGTH: str(len(header)), "Content-Type": "application/octet-stream"})  # fmt: skip
    assert r.status_code == 200, r.text
    length = int(r.headers[HEADER_LENGTH])
    out = json.loads(r.content[:length])["outputs"][0]
    assert out["parameters"]["binary_data_size"] == 3 * 3 * 4
    logits = np.frombuffer(r.content[length:], np.float32).reshape(3, 3)
    np.testing.assert_allclose(logits, reference(model_path, x), rtol=1e-5, atol=1e-5)


BAD_BODIES = [
    ("{not json", None, 400, "not valid JSON"),
    ('["a list"]', None, 400, "must be a JSON object"),
    (json.dumps({"inputs": []}), None, 400, "non-empty list"),
    (json.dumps(json_infer(solid((0.5, 0.5, 0.5))) | {"id": 5}), None, 400, "'id' must be a string"),
    (
        json.dumps(
            {"inputs": [{"name": "images", "datatype": "INT32", "shape": [1, 3, 16, 16], "data": [0] * 768}]}
        ),
        None,
        400,
        "datatype INT32 given",
    ),  # fmt: skip
    (
        json.dumps({"inputs": [{"name": "images", "datatype": "NOPE", "shape": [1], "data": [0]}]}),
        None,
        400,
        "unsupported datatype",
    ),  # fmt: skip
    (
        json.dumps(
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": [0.0] * 7}]}
        ),
        None,
        400,
        "7 values in data",
    ),  # fmt: skip
    (
        json.dumps(
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 16], "data": ["x"] * 768}]}
        ),
        None,
        400,
        "not a list of FP32",
    ),  # fmt: skip
    (
        json.dumps(
            {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, "16"], "data": []}]}
        ),
        None,
        400,
        "must hold integers",
    ),  # fmt: skip
    (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": [1, 3, 16, 16],
                        "parameters": {"binary_data_size": 10},
                    }
                ]
            }
        ),
        "LEN",
        400,
        "binary_data_size 10",
    ),  # fmt: skip
    (
        json.dumps(
            {
                "inputs": [
                    {
                        "name": "images",
                        "datatype": "FP32",
                        "shape": [1, 3, 16, 16],
                        "parameters": {"binary_data_size": 3072},
                    }
                ]
            }
        ),
        "LEN",
        400,
        "the body holds 0",
    ),  # fmt: skip
    (json.dumps(json_infer(solid((0.5, 0.5, 0.5)))), "999999", 400, HEADER_LENGTH),
    (json.dumps(json_infer(solid((0.5, 0.5, 0.5)))), "abc", 400, "is not an integer"),
    (
        json.dumps(json_infer(solid((0.5, 0.5, 0.5)), outputs=[{"name": "nope"}])),
        None,
        400,
        "requested outputs",
    ),
]


@pytest.mark.parametrize(("body", "length", "status", "message"), BAD_BODIES)
def test_malformed_bodies_get_protocol_errors_and_the_server_stays_up(
    served, body, length, status, message
) -> None:
    client, _, _ = served
    headers = {}
    if length is not None:
        headers[HEADER_LENGTH] = str(len(body)) if length == "LEN" else length
    r = client.post("/v2/models/colour/infer", content=body.encode(), headers=headers)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    ok = client.post("/v2/models/colour/infer", json=json_infer(solid((0.1, 0.1, 0.9))))
    assert ok.status_code == 200


def test_unknown_model_and_route(served) -> None:
    client, _, _ = served
    r = client.post("/v2/models/other/infer", json=json_infer(solid((0.5, 0.5, 0.5))))
    assert r.status_code == 404 and "not loaded" in r.json()["error"]
    assert client.get("/v2/models/other").status_code == 404
    assert (
        client.get("/v2/nothing/here").status_code == 404 and "error" in client.get("/v2/nothing/here").json()
    )


def test_statistics_count_the_requests_sent(served) -> None:
    client, _, dataplane = served
    version = dataplane.slots.active.version
    for n in (1, 2, 2):
        assert (
            client.post("/v2/models/colour/infer", json=json_infer(solid((0.5, 0.5, 0.5), n))).status_code
            == 200
        )
    bad = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 15], "data": [0.0] * 720}]}
    assert client.post("/v2/models/colour/infer", json=bad).status_code == 400
    stats = client.get("/v2/models/colour/stats").json()["model_stats"]
    assert [s["version"] for s in stats] == [version]
    s = stats[0]
    assert s["inference_stats"]["success"]["count"] == 3 and s["inference_stats"]["fail"]["count"] == 1
    assert s["inference_count"] == 5 and s["execution_count"] == 3
    assert {b["batch_size"]: b["compute_infer"]["count"] for b in s["batch_stats"]} == {1: 1, 2: 2}
    assert s["inference_stats"]["compute_infer"]["ns"] > 0
    assert client.get("/v2/models/stats").json()["model_stats"][0]["inference_count"] == 5
    assert client.get("/v2/models/nobody/stats").status_code == 404


def test_metrics_page_parses_and_counts(served) -> None:
    client, _, dataplane = served
    for _ in range(2):
        client.post("/v2/models/colour/infer", json=json_infer(solid((0.5, 0.5, 0.5))))
    page = client.get("/metrics")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(page.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    version = dataplane.slots.active.version
    key = (("model", "colour"), ("outcome", "success"), ("version", version))
    assert samples[("edgeloop_agent_inference_requests_total", key)] == 2
    assert samples[("edgeloop_agent_ready", ())] == 1
    names = {name for name, _ in samples}
    assert names <= metric_names()
    # and every name the dashboard may use is on a real page (host gauges the host cannot read aside)
    maybe_absent = {
        "edgeloop_agent_gpu_util_percent",
        "edgeloop_agent_power_watts",
        "edgeloop_agent_temperature_celsius",
    }
    assert metric_names() - maybe_absent <= names
    assert "edgeloop_agent_cpu_percent" in {name for name, _ in samples}  # a host gauge


def test_repository_load_and_unload_map_onto_the_slots(served) -> None:
    client, _, dataplane = served
    index = client.post("/v2/repository/index").json()
    assert {(m["name"], m["state"]) for m in index} == {("colour", "READY"), ("green", "UNAVAILABLE")}
    # unloading the only model is refused: nothing would answer
    r = client.post("/v2/repository/models/colour/unload")
    assert r.status_code == 409 and "only model" in r.json()["error"]
    assert client.post("/v2/repository/models/nothing/load").status_code == 404
    assert client.post("/v2/repository/models/..%2F..%2Fetc/load").status_code == 404
    assert client.post("/v2/repository/models/green/load").status_code == 200
    assert dataplane.slots.previous is not None  # the old model stays as the previous slot
    states = {m["state"] for m in client.post("/v2/repository/index").json()}
    assert states == {"READY", "UNAVAILABLE"}
    assert client.post("/v2/repository/models/colour/unload").status_code == 200  # back to the previous
    assert dataplane.slots.previous is None and dataplane.ready()


TRITON_HTTP_CLIENT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tritonclient.http as th
    url, ref_path = sys.argv[1], sys.argv[2]
    ref = np.asarray(json.load(open(ref_path)), np.float32)
    client = th.InferenceServerClient(url=url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("colour")
    assert client.get_server_metadata()["name"] == "edgeloop-agent"
    meta = client.get_model_metadata("colour")
    assert meta["inputs"][0]["name"] == "images", meta
    assert client.get_model_config("colour")["max_batch_size"] >= 1
    x = np.zeros((2, 3, 16, 16), np.float32); x[:, 0] = 0.9; x[1, 0] = 0.1; x[1, 2] = 0.9
    for binary in (True, False):
        inp = th.InferInput("images", list(x.shape), "FP32"); inp.set_data_from_numpy(x, binary_data=binary)
        res = client.infer("colour", [inp], outputs=[th.InferRequestedOutput("logits", binary_data=binary)])
        np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-5)
    res = client.infer("colour", [inp])  # no outputs named: all of them, binary
    np.testing.assert_allclose(res.as_numpy("logits"), ref, rtol=1e-5, atol=1e-5)
    bad = th.InferInput("images", [1, 3, 8, 8], "FP32"); bad.set_data_from_numpy(np.zeros((1, 3, 8, 8), np.float32))
    try:
        client.infer("colour", [bad])
    except th.InferenceServerException as exc:
        assert exc.status() == "400" and "does not fit" in exc.message(), (exc.status(), exc.message())
    else:
        raise SystemExit("malformed request accepted")
    stats = client.get_inference_statistics("colour")["model_stats"][0]
    assert stats["inference_stats"]["success"]["count"] == 3, stats
    assert stats["inference_stats"]["fail"]["count"] == 1, stats
    index = client.get_model_repository_index()
    assert any(m["name"] == "colour" and m["state"] == "READY" for m in index), index
    print("tritonclient.http ok")
    """
)


def triton_env(module: str) -> dict:
    env = dict(os.environ)
    if os.environ.get("EDGELOOP_TRITONCLIENT_PATH"):  # a --target install beside the venv
        env["PYTHONPATH"] = os.environ["EDGELOOP_TRITONCLIENT_PATH"]
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"{module} is not installed (scripts/test.sh installs tritonclient[grpc,http])")
    return env


def run_triton_http(port: int, model_path: Path, tmp_path: Path) -> None:
    env = triton_env("tritonclient.http")
    x = np.zeros((2, 3, 16, 16), np.float32)
    x[:, 0] = 0.9
    x[1, 0], x[1, 2] = 0.1, 0.9
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps(reference(model_path, x).tolist()))
    script = tmp_path / "client.py"
    script.write_text(TRITON_HTTP_CLIENT)
    proc = subprocess.run([sys.executable, str(script), f"127.0.0.1:{port}", str(ref)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tritonclient.http ok" in proc.stdout


def test_unmodified_tritonclient_http_against_serve(served, model_path, tmp_path) -> None:
    """tritonclient pins protobuf < 7, so it runs in its own process with its own site folder."""
    _, server, _ = served
    run_triton_http(server.port, model_path, tmp_path)


def test_unmodified_tritonclient_http_against_a_fleet_agent(tmp_path, artifacts) -> None:
    """``agent run``'s runtime: a fleet deploy, then the HTTP port answers beside gRPC."""
    settings = AgentSettings(agent_dir=tmp_path / "a", threads=1, serve_port=0, http_port=0)
    with AgentRuntime(settings, deploy_bench=None) as runtime:
        v = make_artifact(artifacts, "fxh", version="colour:fxh")
        runtime.deploy(onnx_path=v, manifest_json=(v.parent / "manifest.json").read_text(), shards=Shards(),
                       command=fleet_pb2.Deploy(activate=True))  # fmt: skip
        assert runtime.served == [runtime.grpc_server, runtime.http_server]
        run_triton_http(runtime.http_server.port, v, tmp_path)
        if shutil.which("curl"):  # and curl, for the JSON form, as an operator would
            x = solid((0.1, 0.1, 0.9))
            curl = subprocess.run(["curl", "-sS", "-X", "POST", "--data-binary", json.dumps(json_infer(x)),
                                   f"http://127.0.0.1:{runtime.http_server.port}/v2/models/colour/infer"],
                                  capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
            got = np.asarray(json.loads(curl.stdout)["outputs"][0]["data"], np.float32).reshape(1, 3)
            np.testing.assert_allclose(got, reference(v, x), rtol=1e-5, atol=1e-5)
            bad = subprocess.run(["curl", "-sS", "-w", "%{http_code}", "-X", "POST", "--data-binary", "{",
                                  f"http://127.0.0.1:{runtime.http_server.port}/v2/models/colour/infer"],
                                 capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
            assert bad.stdout.endswith("400") and "not valid JSON" in bad.stdout
        page = render_metrics(runtime.dataplane, host=False).decode()
        assert (
            'edgeloop_agent_inference_requests_total{model="colour",outcome="success",version="colour:fxh"} '
            + ("4.0" if shutil.which("curl") else "3.0")
            in page  # tritonclient's three answered requests, and curl's
        )


def test_accepted_connections_send_without_nagle(served) -> None:
    """A response's head and body go out at once (TCP_NODELAY on the listening socket, inherited
    by accepted ones): with Nagle, each JSON answer waited for the client's delayed ACK."""
    import socket

    _, server, _ = served
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        client.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert client.recv(1024).startswith(b"HTTP/1.1 200")
    assert server._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
