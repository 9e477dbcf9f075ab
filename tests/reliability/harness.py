"""Real processes for the reliability tests: ``edgeloop controller serve`` and ``edgeloop agent
run`` as children of the test, killed with SIGKILL at the bad moment and started again on the
same state. Nothing is a stand-in: gRPC, REST, the DB, ONNX Runtime engines, the broker.

The tiny colour classifiers come from tests/agent/agent_testkit.py (loaded by path: this folder
does not import the agent tests' conftest).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import grpc
import httpx
import numpy as np

from protos import inference_pb2, inference_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
TESTKIT = ROOT / "tests" / "agent" / "agent_testkit.py"
API_TOKEN, ENROL_TOKEN = "rel-api", "rel-enrol"


def testkit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("agent_testkit_for_reliability", TESTKIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    from controller.broker import free_port as _free

    return _free()


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for: {what}")
        time.sleep(0.1)


def shard_tar(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(folder, arcname="eval")
    return dest


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


@dataclass
class Proc:
    """A child process with its log; ``kill()`` is SIGKILL (no clean shutdown)."""

    cmd: list[str]
    log: Path
    env: dict[str, str]
    popen: subprocess.Popen | None = None

    def start(self) -> Proc:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(self.cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGKILL)
        if self.popen is not None:
            self.popen.wait(timeout=30)

    def stop(self) -> None:
        if self.alive():
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


@dataclass
class ControllerProc(Proc):
    grpc_port: int = 0
    http_port: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{self.http_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def start(self) -> ControllerProc:
        super().start()
        wait_until(lambda: self.healthy() or not self.alive(), 90, "controller healthy")
        assert self.alive(), self.tail()
        return self

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=f"http://127.0.0.1:{self.http_port}/api/v1",
                            headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=60)  # fmt: skip


def controller(data: Path, *, grpc_port: int = 0, http_port: int = 0, mqtt: str = "",
               extra_env: dict[str, str] | None = None) -> ControllerProc:  # fmt: skip
    """A controller process on ``data`` (SQLite there); ``mqtt`` = broker URL, "" = no telemetry."""
    grpc_port, http_port = grpc_port or free_port(), http_port or free_port()
    data.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "edgeloop.cli", "controller", "serve", "--data-dir", str(data),
           "--host", "127.0.0.1", "--grpc-port", str(grpc_port), "--http-port", str(http_port),
           "--insecure"]  # durability, not transport security, is tested here (tests/security does TLS)  # fmt: skip
    cmd += ["--mqtt", mqtt] if mqtt else ["--no-broker"]
    cmd += ["--insecure"]  # plaintext gRPC: TLS and certificates are tests/security's subject
    env = _env(EDGELOOP_API_TOKEN=API_TOKEN, EDGELOOP_ENROLLMENT_TOKEN=ENROL_TOKEN,
               EDGELOOP_HEARTBEAT_INTERVAL_S="1", EDGELOOP_ROLLOUT_TICK_S="0.1", **(extra_env or {}))  # fmt: skip
    return ControllerProc(
        cmd=cmd, log=data / "controller.log", env=env, grpc_port=grpc_port, http_port=http_port
    )


def agent(agent_dir: Path, target: str, *, name: str, tags: str = "rel", serve_port: int = 0,
          mqtt: str = "", extra: list[str] | None = None) -> Proc:  # fmt: skip
    """An ``edgeloop agent run`` process (one engine thread) serving live inference on ``serve_port``;
    its HTTP port is a free one (the default 8000 would be the second agent's too)."""
    agent_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "edgeloop.cli", "agent", "run", "--controller", target, "--agent-dir",
           str(agent_dir), "--name", name, "--tags", tags, "--threads", "1", "--hardware-class", "cpu-rel",
           "--serve-port", str(serve_port), "--http-port", "0", "--metrics-interval", "1",
           "--insecure"]  # fmt: skip
    if mqtt:
        cmd += ["--mqtt", mqtt]
    cmd += extra or []
    return Proc(cmd=cmd, log=agent_dir / "agent.log", env=_env(EDGELOOP_ENROLLMENT_TOKEN=ENROL_TOKEN))


def import_model(api: httpx.Client, onnx_path: Path) -> dict:
    manifest = (onnx_path.parent / "manifest.json").read_text()
    with open(onnx_path, "rb") as fh:
        r = api.post("/models/import", files={"onnx": fh, "manifest": ("manifest.json", manifest)})
    assert r.status_code == 201, r.text
    return r.json()


def import_shard(api: httpx.Client, tar: Path) -> str:
    with open(tar, "rb") as fh:
        r = api.post("/artifacts/shards", files={"file": (tar.name, fh)}, data={"name": tar.stem})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def rollout(api: httpx.Client, version: str, eval_id: str, **strategy: object) -> dict:
    body = {"model_version": version, "selector": {"tags": ["rel"]}, "evaluation_artifact_id": eval_id,
            "backend": "onnxruntime", "strategy": {"canary_share": 0, "waves": 1, "min_fps_ratio": None,
                                                   "max_accuracy_drop": 5.0, **strategy}}  # fmt: skip
    r = api.post("/rollouts/", json=body)
    assert r.status_code == 201, r.text
    return r.json()


def finished(api: httpx.Client, rollout_id: str, timeout: float = 120) -> dict:
    wait_until(lambda: api.get(f"/rollouts/{rollout_id}").json()["state"] not in ("running", "paused"),
               timeout, f"rollout {rollout_id} finished")  # fmt: skip
    return api.get(f"/rollouts/{rollout_id}").json()


def device(api: httpx.Client, name: str) -> dict:
    return next(d for d in api.get("/devices/").json()["data"] if d["name"] == name)


def online(api: httpx.Client, name: str) -> bool:
    """The device ``name`` is enrolled and its control stream is open."""
    return any(d["name"] == name and d["connected"] for d in api.get("/devices/").json()["data"])


def blue_request(model_name: str, version: str = "") -> inference_pb2.ModelInferRequest:
    """One blue 16x16 image: the colour classifiers answer class 0."""
    x = np.zeros((1, 3, 16, 16), np.float32)
    x[:, 2] = 0.9
    req = inference_pb2.ModelInferRequest(model_name=model_name, model_version=version)
    req.inputs.add(name="images", datatype="FP32", shape=list(x.shape))
    req.raw_input_contents.append(x.tobytes())
    return req


def infer(
    port: int, model_name: str, version: str = "", timeout: float = 10
) -> inference_pb2.ModelInferResponse:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        return stub.ModelInfer(blue_request(model_name, version), timeout=timeout)


def serving(port: int, model_name: str) -> str:
    """The version answering ``model_name`` on ``port``, "" while nothing does."""
    try:
        return infer(port, model_name, timeout=2).model_version
    except grpc.RpcError:
        return ""


@dataclass
class Fleet:
    """The models and the evaluation shard most tests use, imported into a controller."""

    good: Path
    better: Path
    bad: Path
    eval_id: str = ""
    versions: dict[str, str] = field(default_factory=dict)


def colour_models(root: Path) -> tuple[Path, Path, Path, Path]:
    kit = testkit()
    good = kit.make_artifact(root / "models", "good", version="colour:1")
    better = kit.make_artifact(root / "models", "better", version="colour:2", seed=1)
    bad = kit.make_artifact(root / "models", "bad", version="colour:3", scrambled=True)
    shard = shard_tar(kit.colour_folder(root / "eval", per_class=4), root / "eval.tar")
    return good, better, bad, shard


def read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))
