"""Test helpers: tiny ONNX models, manifests, a scripted executor and real in-process agents.

The executor (the device work ``agent.fleet.daemon.DeviceWork`` asks for) is the only stand-in: the gRPC control plane, downloads, signatures, the DB and the
broker are all real. It answers a deploy or benchmark with the accuracy and throughput the test
scripted for that model version, after loading the ONNX file it was given (so a broken file
fails the way it would on a device).
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import onnx
from onnx import TensorProto, helper

from agent.fleet.client import AgentIdentity, FleetClient
from agent.fleet.daemon import FleetAgent
from agent.runtime import SlotState
from agent.shards import Shards
from controller.core.config import get_settings
from controller.runtime import Controller
from protos import fleet_pb2


def minimal_hardware(hardware_class: str = "", threads: int = 0) -> fleet_pb2.HardwareProfile:
    """A stand-in device's profile from the standard library (no probe, no fingerprint): the
    control-plane tests enrol many devices of made-up classes from one host."""
    return fleet_pb2.HardwareProfile(
        hostname=socket.gethostname(),
        arch=platform.machine(),
        os=f"{platform.system()} {platform.release()}",
        cpu_model=platform.processor(),
        cpu_cores=os.cpu_count() or 0,
        hardware_class=hardware_class or f"{platform.machine()}-cpu",
        cpu_threads_limit=threads,
    )


def write_onnx(path: Path, tag: str = "v1", pad_bytes: int = 0) -> Path:
    """A tiny valid model (y = relu(x) + c); ``tag`` and ``pad_bytes`` make its bytes differ."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])
    c = helper.make_tensor(
        "c",
        TensorProto.FLOAT,
        [max(1, pad_bytes // 4) if pad_bytes else 4],
        [0.5] * (max(1, pad_bytes // 4) if pad_bytes else 4),
    )
    nodes = [helper.make_node("Relu", ["input"], ["r"])]
    if pad_bytes:
        nodes.append(helper.make_node("Identity", ["r"], ["logits"]))
    else:
        nodes.append(helper.make_node("Add", ["r", "c"], ["logits"]))
    graph = helper.make_graph(nodes, f"tiny-{tag}", [x], [y], initializer=[c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], doc_string=tag)
    model.ir_version = 9
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save_model(model, str(path))
    return path


def manifest_json(
    version: str, *, name: str = "tiny", parent: str = "", sha256: str = "", **extra: object
) -> str:
    m = {
        "schema_version": 1,
        "name": name,
        "version": version,
        "task": "classification",
        "labels": ["a", "b", "c", "d"],
        "metrics": {"top1": 0.9},
        "lineage": {"parent_version": parent, "action": "train" if not parent else "prune"},
        "precision": "fp32",
    }
    if sha256:
        m["sha256"] = sha256
    m.update(extra)
    return json.dumps(m)


@dataclass
class ScriptedExecutor:
    """Slots in memory; measurements scripted per version: {version: (accuracy %, fps)}."""

    scores: dict[str, tuple[float, float]] = field(default_factory=dict)
    active: str = ""
    previous: str = ""
    fail_versions: set[str] = field(default_factory=set)
    deploy_delay_s: float = 0.0
    calls: list[tuple[str, str]] = field(default_factory=list)
    deploys: list[fleet_pb2.Deploy] = field(default_factory=list)  # the commands as received

    def state(self) -> SlotState:
        return SlotState(active=self.active, previous=self.previous)

    def _report(self, version: str, backend: str, precision: str) -> fleet_pb2.Report:
        acc, fps = self.scores.get(version, (90.0, 100.0))
        return fleet_pb2.Report(
            model_version=version,
            backend=backend or "onnxruntime",
            precision=precision or "fp32",
            accuracy={"top1": acc / 100.0},
            scenarios=[
                fleet_pb2.ScenarioResult(scenario="offline", batch_size=8, throughput_fps=fps, valid=True),
                fleet_pb2.ScenarioResult(
                    scenario="singlestream",
                    batch_size=1,
                    throughput_fps=fps / 4,
                    latency_p50_ms=4000 / fps,
                    latency_p90_ms=4500 / fps,
                    latency_p99_ms=5000 / fps,
                    valid=True,
                ),
            ],
            peak_memory_bytes=10 << 20,
        )

    def deploy(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Deploy, shards: Shards
    ) -> fleet_pb2.Report:
        version = command.artifact.model_version
        self.calls.append(("deploy", version))
        self.deploys.append(command)
        onnx.checker.check_model(onnx.load_model(str(onnx_path)))
        if self.deploy_delay_s:
            time.sleep(self.deploy_delay_s)
        if version in self.fail_versions:
            raise RuntimeError(f"health check failed for {version}")
        report = self._report(version, command.backend, command.precision)
        if command.activate:
            self.previous, self.active = self.active, version
        return report

    def benchmark(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Benchmark, shards: Shards
    ) -> list[fleet_pb2.Report]:
        version = command.artifact.model_version
        self.calls.append(("benchmark", version))
        onnx.checker.check_model(onnx.load_model(str(onnx_path)))
        return [
            self._report(version, b, p)
            for b in (command.backends or ["onnxruntime"])
            for p in (command.precisions or ["fp32"])
        ]

    def calibrate(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Calibrate, shards: Shards
    ) -> fleet_pb2.Report:
        return self._report(command.artifact.model_version, command.backend, command.precision)

    def switch(self, model_version: str) -> str:
        self.calls.append(("switch", model_version))
        self.previous, self.active = self.active, model_version
        return self.active

    def rollback(self, to_version: str = "") -> str:
        self.calls.append(("rollback", to_version))
        self.active, self.previous = (to_version or self.previous), self.active
        return self.active


@dataclass
class RunningAgent:
    client: FleetClient
    agent: FleetAgent
    executor: ScriptedExecutor
    thread: threading.Thread
    error: list[BaseException]

    @property
    def device_id(self) -> str:
        return self.client.credentials.device_id if self.client.credentials else ""

    def stop(self) -> None:
        self.client.close()
        self.thread.join(timeout=10)


def start_agent(
    target: str,
    agent_dir: Path,
    enrollment_token: str,
    *,
    name: str = "dev",
    hardware_class: str = "cpu-test",
    tags: list[str] | None = None,
    executor: ScriptedExecutor | None = None,
    wait: bool = True,
    client_args: dict[str, object] | None = None,
) -> RunningAgent:
    """A real FleetClient + FleetAgent in a thread; ``client_args`` (how to enrol: TLS port and
    CA, or insecure) default to what ``make_controller`` recorded for ``target``."""
    identity = AgentIdentity(
        name=name, hardware=minimal_hardware(hardware_class), tags=tags or [], agent_version="test"
    )
    client = FleetClient(target, agent_dir, identity, enrollment_token, **(client_args or trust(target)))
    executor = executor or ScriptedExecutor()
    agent = FleetAgent(client, executor)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            agent.run()
        except BaseException as exc:  # the test reads it
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"agent-{name}", daemon=True)
    thread.start()
    running = RunningAgent(client, agent, executor, thread, errors)
    if wait:
        wait_until(lambda: client.connected.is_set() or bool(errors), 20, f"agent {name} connected")
        if errors:
            raise errors[0]
    return running


_TRUST: dict[str, dict[str, object]] = {}  # grpc target -> how an agent enrols with that controller


def trust(target: str | Controller) -> dict[str, object]:
    """The FleetClient arguments for enrolling with a controller of ``make_controller``: its TLS
    enrolment port and CA fingerprint (what `edgeloop controller serve` prints), or insecure."""
    key = target.grpc_target if isinstance(target, Controller) else target
    return dict(_TRUST.get(key, {"insecure": True}))


def wait_until(
    predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition", poll: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def make_controller(
    data_dir: Path, db_url: str | None, *, http: bool = False, grpc_port: int = 0, **overrides: object
) -> Controller:
    start_broker = bool(overrides.pop("start_broker", False))  # the controller's own Mosquitto
    settings = get_settings(
        data_dir=data_dir,
        db_url=db_url,
        grpc_port=grpc_port,
        grpc_host="127.0.0.1",
        http_host="127.0.0.1",
        http_port=0,
        start_broker=start_broker,
        api_token="test-api-token",
        enrollment_token="test-enrollment-token",
        rollout_tick_s=0.1,
        heartbeat_interval_s=1,
        **overrides,
    )
    telemetry = bool(overrides.get("mqtt_url") or start_broker)
    ctl = Controller(settings).start(http=http, telemetry=telemetry)
    if settings.insecure:
        _TRUST[ctl.grpc_target] = {"insecure": True}
    else:
        _TRUST[ctl.grpc_target] = {"enroll_target": ctl.enroll_target, "ca_fingerprint": ctl.ca_fingerprint}
    return ctl


def controller_healthy(http_port: int) -> bool:
    """``/healthz`` answers 200 (the controller is up and reads its database)."""
    try:
        return httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def serve_controller(
    data: Path,
    db_url: str,
    log: Path,
    *,
    grpc_port: int,
    http_port: int,
    enroll_port: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """``edgeloop controller serve`` as a real process (to be SIGKILLed), healthy when returned."""
    environ = dict(
        os.environ, EDGELOOP_HEARTBEAT_INTERVAL_S="1", EDGELOOP_ROLLOUT_TICK_S="0.1", **(env or {})
    )
    if enroll_port is not None:
        environ["EDGELOOP_ENROLL_PORT"] = str(enroll_port)
    cmd = [sys.executable, "-m", "edgeloop.cli", "controller", "serve", "--data-dir", str(data), "--host", "127.0.0.1",
           "--grpc-port", str(grpc_port), "--http-port", str(http_port), "--no-broker", "--db", db_url]  # fmt: skip
    proc = subprocess.Popen(cmd, env=environ, stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115
    wait_until(lambda: controller_healthy(http_port) or proc.poll() is not None, 60, "controller healthy")
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc
