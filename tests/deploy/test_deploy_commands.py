"""The exact commands of the deploy files, run outside containers on loopback.

The controller runs as deploy/compose.yaml runs it (the controller image's ENTRYPOINT + the
service's command, the image's ENV + the service's environment); one agent runs as the systemd
unit runs it (ExecStart=, Environment= and the EnvironmentFile example), another as the compose
service agent-cpu-1 runs it. Everything is parsed out of those files. Only values that name this
host are replaced, never a variable name, and only for variables the file itself sets:

- ``edgeloop`` (/opt/edgeloop/venv/bin/edgeloop in the unit, on PATH in the images) -> this
  venv's ``edgeloop`` console script, the same entry point;
- EDGELOOP_DB_URL (PostgreSQL in compose) -> SQLite in a temp dir, the embedded default
  (the controller's own tests cover PostgreSQL with the ``postgres_url`` fixture);
- EDGELOOP_DATA_DIR / EDGELOOP_AGENT_DIR (volumes) -> temp dirs;
- EDGELOOP_GRPC_PORT / EDGELOOP_HTTP_PORT -> free loopback ports, EDGELOOP_CONTROLLER -> that port;
- EDGELOOP_MQTT_URL -> the ``mqtt_broker`` fixture (deploy/mosquitto's authenticated config is
  tested on its own in test_deploy_mosquitto.py).

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
from pathlib import Path

import pytest
from deploy_files import (
    EDGE_IMAGES,
    compose_config,
    parse_dockerfile,
    parse_unit,
    service_argv,
    service_dockerfile,
    service_env,
)

from controller.broker import LocalBroker, free_port

EDGELOOP = Path(sys.executable).parent / "edgeloop"
START_TIMEOUT_S = 45


def _module_exists(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def _need_entry_points() -> None:
    missing = [
        m
        for m in ("controller.cli", "agent.cli", "agent.fleet.daemon")
        if importlib.util.find_spec(m) is None
    ]
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


def _base_env(home: Path) -> dict[str, str]:
    """What a service manager gives a process: no EDGELOOP_* from this test's environment."""
    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8"}


class Proc:
    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path):
        self.name = name
        self.log_path = logs / f"{name}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, env=env, stdout=self._log, stderr=subprocess.STDOUT)

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


def test_compose_controller_and_systemd_and_compose_agents(tmp_path: Path, mqtt_broker: LocalBroker) -> None:
    _need_entry_points()
    compose = compose_config()
    grpc_port, http_port = free_port(), free_port()
    procs: list[Proc] = []

    # ---- the controller, as compose runs it ----
    ctl_service = compose["services"]["controller"]
    ctl_argv = _local_argv(service_argv(ctl_service))
    ctl_file_env = service_env(ctl_service)
    ctl_env = {
        **_base_env(tmp_path / "home-controller"),
        **_localise(
            ctl_file_env,
            EDGELOOP_DB_URL=f"sqlite:///{tmp_path / 'controller' / 'edgeloop.db'}",
            EDGELOOP_DATA_DIR=str(tmp_path / "controller"),
            EDGELOOP_GRPC_PORT=str(grpc_port),
            EDGELOOP_HTTP_PORT=str(http_port),
            EDGELOOP_MQTT_URL=mqtt_broker.url,
        ),
    }
    api_token = ctl_file_env["EDGELOOP_API_TOKEN"]
    base_url = f"http://127.0.0.1:{http_port}"

    # ---- an agent as the systemd unit runs it ----
    unit = parse_unit()
    sd_env = {
        **_base_env(tmp_path / "home-systemd"),
        **_localise(
            unit.environment(),
            EDGELOOP_AGENT_DIR=str(tmp_path / "agent-systemd"),
            EDGELOOP_CONTROLLER=f"127.0.0.1:{grpc_port}",
            EDGELOOP_MQTT_URL=mqtt_broker.url,
        ),
    }
    sd_argv = _local_argv(unit.exec_start)

    # ---- an agent as compose's agent-cpu-1 runs it ----
    ag_service = compose["services"]["agent-cpu-1"]
    ag_env = {
        **_base_env(tmp_path / "home-compose-agent"),
        **_localise(
            service_env(ag_service),
            EDGELOOP_AGENT_DIR=str(tmp_path / "agent-compose"),
            EDGELOOP_CONTROLLER=f"127.0.0.1:{grpc_port}",
            EDGELOOP_MQTT_URL=mqtt_broker.url,
        ),
    }
    ag_argv = _local_argv(service_argv(ag_service))

    try:
        procs.append(Proc("controller", ctl_argv, ctl_env, tmp_path))
        _wait("controller /healthz", lambda: _get(f"{base_url}/healthz")[0] == 200, procs)

        # the controller image's HEALTHCHECK command, against this controller
        health = parse_dockerfile(service_dockerfile(ctl_service)).healthcheck
        assert health[0] == "python"
        out = subprocess.run(
            [sys.executable, *health[1:]], env=ctl_env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr

        procs.append(Proc("agent-systemd", sd_argv, sd_env, tmp_path))
        procs.append(Proc("agent-compose", ag_argv, ag_env, tmp_path))

        def two_devices() -> list[dict] | None:
            status, body = _get(f"{base_url}/api/v1/devices/", api_token)
            devices = body.get("data", []) if status == 200 else []
            return devices if len(devices) >= 2 else None

        devices = _wait("both agents registered", two_devices, procs)
        assert len(devices) == 2, devices
        tags = [set(d.get("tags") or []) for d in devices]
        assert any("systemd" in t for t in tags), tags
        assert any("compose" in t for t in tags), tags
        assert _get(f"{base_url}/api/v1/devices/")[0] == 401, "the REST API must want the token"

        # the agent images' HEALTHCHECK (edgeloop agent probe), with the compose agent's env
        probe = parse_dockerfile(EDGE_IMAGES / "cpu" / "Dockerfile").healthcheck
        out = subprocess.run(_local_argv(probe), env=ag_env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
    finally:
        for p in reversed(procs):
            p.stop()
