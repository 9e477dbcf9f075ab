"""The exact commands of the deploy files, run outside containers on loopback.

The controller runs as deploy/compose.yaml runs it (the controller image's ENTRYPOINT + the
service's command, the image's ENV + the service's environment); one agent runs as the systemd
unit runs it (ExecStart=, Environment= and the EnvironmentFile example), another as the compose
service agent-cpu-1 runs it. Everything is parsed out of those files. Only values that name this
host are replaced, never a variable name, and only for variables the file itself sets:

- ``edgeloop`` (/opt/edgeloop/venv/bin/edgeloop in the unit, on PATH in the images) -> this
  venv's ``edgeloop`` console script, the same entry point;
- EDGELOOP_DB_URL (PostgreSQL in compose) -> SQLite in a temp dir, the embedded default, or a
  fresh database from the ``postgres_url`` fixture (``test_exact_commands_on_postgresql``);
- EDGELOOP_DATA_DIR / EDGELOOP_AGENT_DIR (volumes) -> temp dirs;
- EDGELOOP_GRPC_PORT / EDGELOOP_HTTP_PORT and the agents' ``--serve-port`` -> free ports,
  EDGELOOP_CONTROLLER -> the controller's;
- EDGELOOP_MQTT_URL -> the ``mqtt_broker`` fixture (anonymous), or, in the tests named
  ``..._deploy_broker``, a Mosquitto running deploy/mosquitto's config with the password file
  made from the compose secrets: then only host:port change and the files' broker accounts are used.

Tokens (API, enrollment) are kept as the example files have them: the agents register only
because the compose and systemd examples agree.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from deploy_files import (
    EDGE_IMAGES,
    DeployBroker,
    compose_config,
    parse_dockerfile,
    parse_unit,
    service_argv,
    service_dockerfile,
    service_env,
    start_deploy_broker,
)

from controller.broker import LocalBroker, free_port, wait_for_port
from protos import inference_pb2, inference_pb2_grpc

EDGELOOP = Path(sys.executable).parent / "edgeloop"
START_TIMEOUT_S = 45


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _need_entry_points() -> None:
    missing = [m for m in ("controller.cli", "agent.cli", "agent.fleet.daemon") if not _module_exists(m)]
    if missing:
        pytest.skip(f"the entry points are not in this tree yet: {', '.join(missing)} missing")
    if not EDGELOOP.exists():
        pytest.skip(f"no `edgeloop` console script at {EDGELOOP} (pip install -e '.[dev]')")


def _local_argv(argv: list[str]) -> list[str]:
    assert Path(argv[0]).name == "edgeloop", f"not the edgeloop entry point: {argv}"
    return [str(EDGELOOP), *argv[1:]]


def _localise(env: dict[str, str], **values: str) -> dict[str, str]:
    """Replace host-specific values; each name must already be set by the deploy file."""
    not_set = set(values) - set(env)
    assert not not_set, f"the deploy file does not set {not_set}: the test would invent configuration"
    return {**env, **values}


def _localise_flag(argv: list[str], flag: str, value: str) -> list[str]:
    """Replace a flag's host-specific value (a port); the flag must be in the file's command."""
    assert flag in argv, f"{argv} has no {flag}: the test would invent configuration"
    i = argv.index(flag)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def _base_env(home: Path) -> dict[str, str]:
    """What a service manager gives a process: no EDGELOOP_* from this test's environment."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path, cwd: Path | None = None):
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.env = env
        self.cwd = cwd
        self.proc = subprocess.Popen(argv, env=env, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT)

    def tail(self, n: int = 40) -> str:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        return f"--- {self.name} (rc={self.proc.poll()}) ---\n" + "\n".join(lines[-n:])

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _get(url: str, token: str | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, {}
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}


def _wait(what: str, predicate, procs: list[Proc], timeout: float = START_TIMEOUT_S):  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        dead = [p for p in procs if p.proc.poll() is not None]
        if dead:
            pytest.fail(f"{what}: a process exited\n" + "\n".join(p.tail() for p in procs))
        time.sleep(0.25)
    pytest.fail(f"{what}: not after {timeout:.0f}s\n" + "\n".join(p.tail() for p in procs))


@dataclass
class Stack:
    base_url: str
    api_token: str
    procs: list[Proc] = field(default_factory=list)
    agent_env: dict[str, str] = field(default_factory=dict)  # compose agent-cpu-1's, localised
    inference_ports: dict[str, int] = field(default_factory=dict)  # agent name -> --serve-port

    def devices(self) -> list[dict]:
        status, body = _get(f"{self.base_url}/api/v1/devices/", self.api_token)
        return body.get("data", []) if status == 200 else []

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.stop()


def _mqtt_local(url_in_file: str, port: int, keep_credentials: bool) -> str:
    """The file's broker URL moved to 127.0.0.1:port; its user:password kept when asked."""
    parts = urlsplit(url_in_file)
    userinfo = f"{parts.username}:{parts.password}@" if keep_credentials and parts.username else ""
    return f"{parts.scheme}://{userinfo}127.0.0.1:{port}"


def _start_stack(
    tmp_path: Path, broker_port: int, keep_credentials: bool, db_url: str | None = None
) -> Stack:
    """The controller as compose runs it, then the systemd agent and compose's agent-cpu-1."""
    compose = compose_config()
    grpc_port, http_port = free_port(), free_port()
    ctl_service = compose["services"]["controller"]
    ctl_file_env = service_env(ctl_service)
    ctl_env = {
        **_base_env(tmp_path / "home-controller"),
        **_localise(
            ctl_file_env,
            EDGELOOP_DB_URL=db_url or f"sqlite:///{tmp_path / 'controller' / 'edgeloop.db'}",
            EDGELOOP_DATA_DIR=str(tmp_path / "controller"),
            EDGELOOP_ARTIFACT_DIR=str(tmp_path / "artifacts"),
            EDGELOOP_GRPC_PORT=str(grpc_port),
            EDGELOOP_HTTP_PORT=str(http_port),
            EDGELOOP_MQTT_URL=_mqtt_local(ctl_file_env["EDGELOOP_MQTT_URL"], broker_port, keep_credentials),
        ),
    }
    stack = Stack(f"http://127.0.0.1:{http_port}", ctl_file_env["EDGELOOP_API_TOKEN"])
    try:
        stack.procs.append(Proc("controller", _local_argv(service_argv(ctl_service)), ctl_env, tmp_path))
        _wait("controller /healthz", lambda: _get(f"{stack.base_url}/healthz")[0] == 200, stack.procs)

        # the controller image's HEALTHCHECK command, against this controller
        health = parse_dockerfile(service_dockerfile(ctl_service)).healthcheck
        assert health[0] == "python"
        out = subprocess.run(
            [sys.executable, *health[1:]], env=ctl_env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr

        unit = parse_unit()
        # the fingerprint the operator copies from the controller's first start into the agents' env
        assert "EDGELOOP_CA_FINGERPRINT" in unit.environment() and "EDGELOOP_CA_FINGERPRINT" in service_env(
            compose["services"]["agent-cpu-1"]
        )
        ca_fingerprint = fingerprint_of(tmp_path / "controller" / "keys" / "ca_cert.pem")
        sd_file_env = unit.environment()
        sd_env = {
            **_base_env(tmp_path / "home-systemd"),
            **_localise(
                sd_file_env,
                EDGELOOP_AGENT_DIR=str(tmp_path / "agent-systemd"),
                EDGELOOP_CONTROLLER=f"127.0.0.1:{grpc_port}",
                EDGELOOP_CA_FINGERPRINT=ca_fingerprint,
                EDGELOOP_MQTT_URL=_mqtt_local(
                    sd_file_env["EDGELOOP_MQTT_URL"], broker_port, keep_credentials
                ),
            ),
        }
        ag_service = compose["services"]["agent-cpu-1"]
        ag_file_env = service_env(ag_service)
        ag_env = {
            **_base_env(tmp_path / "home-compose-agent"),
            **_localise(
                ag_file_env,
                EDGELOOP_AGENT_DIR=str(tmp_path / "agent-compose"),
                EDGELOOP_CONTROLLER=f"127.0.0.1:{grpc_port}",
                EDGELOOP_CA_FINGERPRINT=ca_fingerprint,
                EDGELOOP_MQTT_URL=_mqtt_local(
                    ag_file_env["EDGELOOP_MQTT_URL"], broker_port, keep_credentials
                ),
            ),
        }
        # WorkingDirectory= is the agent dir (StateDirectory= creates it): the same, localised
        assert unit.get("Service", "WorkingDirectory") == [sd_file_env["EDGELOOP_AGENT_DIR"]]
        (tmp_path / "agent-systemd").mkdir(mode=0o700)
        stack.inference_ports = {"agent-systemd": free_port(), "agent-compose": free_port()}
        sd_argv = _localise_flag(
            _local_argv(unit.exec_start), "--serve-port", str(stack.inference_ports["agent-systemd"])
        )
        ag_argv = _localise_flag(
            _local_argv(service_argv(ag_service)), "--serve-port", str(stack.inference_ports["agent-compose"])
        )
        sd_argv = _localise_flag(sd_argv, "--http-port", str(free_port()))
        ag_argv = _localise_flag(
            _localise_flag(ag_argv, "--http-port", str(free_port())), "--serve-host", "127.0.0.1"
        )
        stack.procs.append(Proc("agent-systemd", sd_argv, sd_env, tmp_path, cwd=tmp_path / "agent-systemd"))
        stack.procs.append(Proc("agent-compose", ag_argv, ag_env, tmp_path))
        stack.agent_env = ag_env

        def both_connected() -> list[dict] | None:
            devices = stack.devices()
            return devices if len(devices) == 2 and all(d["connected"] for d in devices) else None

        _wait("both agents registered, control streams up", both_connected, stack.procs)
        return stack
    except BaseException:
        stack.stop()
        raise


def fingerprint_of(pem_path: Path) -> str:
    import hashlib
    import ssl

    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem_path.read_text())).hexdigest()


def test_exact_commands_controller_healthy_agents_register(tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    _need_entry_points()
    stack = _start_stack(tmp_path, mqtt_broker.port, keep_credentials=False)
    try:
        devices = stack.devices()
        assert len(devices) == 2, devices
        tags = [set(d.get("tags") or []) for d in devices]
        assert any("systemd" in t for t in tags), tags
        assert any({"compose", "cpu"} <= t for t in tags), tags
        assert _get(f"{stack.base_url}/api/v1/devices/")[0] == 401, "the REST API must want the token"

        # EDGELOOP_AGENT_THREADS of the compose agent reaches the controller (an emulated device class)
        (compose_dev,) = [d for d in devices if "compose" in (d.get("tags") or [])]
        threads = int(stack.agent_env["EDGELOOP_AGENT_THREADS"])
        assert compose_dev["hardware"].get("cpu_threads_limit") == threads, compose_dev["hardware"]

        # telemetry (MQTT) reaches the controller under each device's id: retained state "online"
        _wait(
            "telemetry state online for both devices",
            lambda: all(d["telemetry_state"] == "online" for d in stack.devices()),
            stack.procs,
        )

        # the agent images' HEALTHCHECK (edgeloop agent probe), with the compose agent's env
        probe = parse_dockerfile(EDGE_IMAGES / "cpu" / "Dockerfile").healthcheck
        out = subprocess.run(
            _local_argv(probe), env=stack.agent_env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stdout + out.stderr

        # both agents serve live inference on the port their file gives: Open Inference Protocol ServerLive
        for name, port in stack.inference_ports.items():
            with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                live = inference_pb2_grpc.GRPCInferenceServiceStub(channel).ServerLive(
                    inference_pb2.ServerLiveRequest(), timeout=10
                )
            assert live.live, name

        # the systemd agent killed (a crash: what Restart=on-failure restarts) and started again with
        # the same agent dir keeps its enrolment: the same device, no new one
        before = {d["id"] for d in devices}
        (sd_id,) = [d["id"] for d in devices if "systemd" in (d.get("tags") or [])]

        def sd_device() -> dict:
            return next((d for d in stack.devices() if d["id"] == sd_id), {})

        sd = stack.procs[1]
        sd.proc.kill()
        sd.stop()
        seen_before = sd_device().get("last_seen")
        stack.procs[1] = Proc("agent-systemd-2", list(sd.proc.args), sd.env, tmp_path, cwd=sd.cwd)
        _wait(
            "the restarted agent connects as the same device",
            lambda: (d := sd_device()).get("connected") is True and d.get("last_seen") != seen_before,
            stack.procs,
        )
        assert {d["id"] for d in stack.devices()} == before, "a restart must not enrol a new device"
    finally:
        stack.stop()


@pytest.mark.postgres
def test_exact_commands_on_postgresql(tmp_path: Path, mqtt_broker: LocalBroker, postgres_url: str) -> None:
    """As above with PostgreSQL, compose's database (skipped with the reason when none can be had)."""
    _need_entry_points()
    stack = _start_stack(tmp_path, mqtt_broker.port, keep_credentials=False, db_url=postgres_url)
    try:
        assert len(stack.devices()) == 2
    finally:
        stack.stop()


@pytest.fixture
def deploy_broker(tmp_path: Path) -> Iterator[DeployBroker]:
    """deploy/mosquitto's config with the accounts and passwords the compose secrets define."""
    compose = compose_config()
    init_env = compose["services"]["mosquitto-passwd"]["environment"]
    users = {"controller": init_env["MQTT_CONTROLLER_PASSWORD"], "agent": init_env["MQTT_AGENT_PASSWORD"]}
    broker = start_deploy_broker(tmp_path / "broker", users, free_port())
    if isinstance(broker, str):
        pytest.skip(broker)
    try:
        wait_for_port("127.0.0.1", broker.port)
        yield broker
    finally:
        broker.stop()


def test_exact_commands_deploy_broker_controller_authenticates(
    tmp_path: Path, deploy_broker: DeployBroker
) -> None:
    _need_entry_points()
    stack = _start_stack(tmp_path, deploy_broker.port, keep_credentials=True)
    try:
        assert _wait_for_log(deploy_broker, "u'controller'"), deploy_broker.log()
        assert "not authorised" not in _controller_lines(deploy_broker.log()), deploy_broker.log()
    finally:
        stack.stop()


def test_exact_commands_deploy_broker_agent_telemetry_online(
    tmp_path: Path, deploy_broker: DeployBroker
) -> None:
    _need_entry_points()
    stack = _start_stack(tmp_path, deploy_broker.port, keep_credentials=True)
    try:
        deadline = time.monotonic() + 12
        while time.monotonic() < deadline:
            if all(d["telemetry_state"] == "online" for d in stack.devices()):
                break
            time.sleep(0.5)
        states = {d["id"]: d["telemetry_state"] for d in stack.devices()}
        assert all(s == "online" for s in states.values()), f"{states}\n{deploy_broker.log()[-2000:]}"
    finally:
        stack.stop()


def test_exact_commands_agents_never_receive_the_controllers_broker_password(
    tmp_path: Path, deploy_broker: DeployBroker
) -> None:
    _need_entry_points()
    controller_password = compose_config()["services"]["mosquitto-passwd"]["environment"][
        "MQTT_CONTROLLER_PASSWORD"
    ]
    stack = _start_stack(tmp_path, deploy_broker.port, keep_credentials=True)
    try:
        for agent_dir in ("agent-systemd", "agent-compose"):
            for path in (tmp_path / agent_dir).rglob("*"):
                if path.is_file():
                    assert controller_password.encode() not in path.read_bytes(), f"{path} holds it"
    finally:
        stack.stop()


def _controller_lines(log: str) -> str:
    return "\n".join(line for line in log.splitlines() if "controller" in line)


def _wait_for_log(broker: DeployBroker, needle: str, timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in broker.log():
            return True
        time.sleep(0.2)
    return False
