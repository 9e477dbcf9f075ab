"""``edgeloop agent serve`` as a process: gRPC answers, telemetry goes out, SIGTERM stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
from test_agent_telemetry import Subscriber

from controller.broker import free_port
from protos import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def test_serve_with_telemetry(model_path, images, mqtt_broker, tmp_path) -> None:
    sub = Subscriber(mqtt_broker.url, "cli/devices/edge-7/#")
    port, http_port = free_port(), free_port()
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(tmp_path / "agent"), EDGELOOP_TELEMETRY_PREFIX="cli",
               EDGELOOP_MQTT_URL=mqtt_broker.url, PYTHONPATH=str(ROOT))  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "agent", "serve", str(model_path), "--host", "127.0.0.1",
         "--port", str(port), "--http-port", str(http_port), "--eval", str(images), "--accuracy-floor", "0.9", "--device-id", "edge-7",
         "--metrics-interval", "0.3", "--threads", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("serving colour"), (
            line + proc.stderr.read() if proc.poll() is not None else line
        )
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        assert stub.ServerReady(inference_pb2.ServerReadyRequest(), timeout=10).ready
        # the HTTP/REST twin with curl: JSON tensors in, JSON tensors out
        body = json.dumps({"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 3, 16, 16],
                                       "data": [0.1] * 256 + [0.9] * 256 + [0.1] * 256}]})  # fmt: skip
        curl = subprocess.run(["curl", "-sS", "-X", "POST", "--data-binary", body,
                               f"http://127.0.0.1:{http_port}/v2/models/colour/infer"],
                              capture_output=True, text=True, timeout=30)  # fmt: skip
        answer = json.loads(curl.stdout)
        assert answer["model_version"] == "colour:dynamic" and answer["outputs"][0]["shape"] == [1, 3]
        assert max(range(3), key=answer["outputs"][0]["data"].__getitem__) == 1  # green
        sub.wait(lambda m: m[0].endswith("/state") and m[1]["state"] == "online")
        sub.wait(lambda m: m[0].endswith("/events") and m[1]["event"] == "switched")
        _, metrics, _ = sub.wait(lambda m: m[0].endswith("/metrics"))
        assert metrics["active_version"] == "colour:dynamic"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
        sub.wait(lambda m: m[0].endswith("/state") and m[1]["state"] == "offline")
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()


def test_serve_refuses_a_model_below_the_floor(artifacts, images, tmp_path) -> None:
    from agent_testkit import make_artifact

    bad = make_artifact(artifacts, "cli-bad", version="colour:cli-bad", scrambled=True)
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(tmp_path / "agent"), PYTHONPATH=str(ROOT))
    env.pop("EDGELOOP_MQTT_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "agent", "serve", str(bad), "--port", str(free_port()),
         "--http-port", "-1", "--eval", str(images), "--accuracy-floor", "0.9"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "below the floor" in proc.stderr
