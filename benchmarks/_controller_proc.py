"""Start a controller as a child process on free loopback ports (shared by the benchmarks)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from controller.broker import free_port


@dataclass
class ControllerProc:
    proc: subprocess.Popen
    data_dir: Path
    grpc_port: int
    http_port: int
    api_token: str = "bench-api-token"
    enrollment_token: str = "bench-enrollment-token"

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> httpx.Client:
        return httpx.Client(
            base_url=f"http://127.0.0.1:{self.http_port}/api/v1",
            headers={"Authorization": f"Bearer {self.api_token}"},
            timeout=120,
        )

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def start_controller(
    data_dir: Path,
    db_url: str | None = None,
    extra_env: dict | None = None,
    *,
    name: str = "controller",
    mqtt_url: str | None = None,
) -> ControllerProc:
    """``name`` names the log (``<data dir>/../<name>.log``): several controllers may share one
    data dir (docs/deploy.md). ``mqtt_url``: telemetry from that broker (default: none)."""
    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ)
    env.update(
        {
            "EDGELOOP_API_TOKEN": "bench-api-token",
            "EDGELOOP_ENROLLMENT_TOKEN": "bench-enrollment-token",
            "EDGELOOP_HEARTBEAT_INTERVAL_S": "5",
            # the simulated fleets speak plaintext unless a benchmark measures TLS (EDGELOOP_INSECURE=false)
            "EDGELOOP_INSECURE": "true",
            **(extra_env or {}),
        }
    )
    cmd = [
        sys.executable,
        "-m",
        "edgeloop.cli",
        "controller",
        "serve",
        "--data-dir",
        str(data_dir),
        "--grpc-port",
        str(grpc_port),
        "--http-port",
        str(http_port),
        "--host",
        "127.0.0.1",
        *(["--mqtt", mqtt_url] if mqtt_url else ["--no-broker"]),
    ]
    if db_url:
        cmd += ["--db", db_url]
    log_path = data_dir.parent / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    ctl = ControllerProc(proc, data_dir, grpc_port, http_port)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"controller exited: see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{http_port}/healthz", timeout=1).status_code == 200:
                return ctl
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    ctl.stop()
    raise RuntimeError("controller did not become healthy in 60 s")
