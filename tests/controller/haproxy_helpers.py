"""A real haproxy (Debian's package) started by a test or a benchmark, with
deploy/haproxy/edgeloop.cfg as shipped: only its listen addresses and the controllers' addresses
replaced (free loopback ports), so what is tested is the file a deployment installs."""

from __future__ import annotations

import re
import resource
import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from nginx_helpers import wait_port

from controller.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "haproxy" / "edgeloop.cfg"
HAPROXY = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None)
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="haproxy not installed (scripts/test.sh installs Debian's package)"
)
# the shipped file's ports: gRPC (mutual TLS), enrolment (TLS), REST
GRPC, ENROL, HTTP = 50051, 50052, 8000


@dataclass(frozen=True)
class Backend:
    """One controller's loopback ports."""

    grpc_port: int
    enroll_port: int
    http_port: int


@dataclass
class Haproxy:
    proc: subprocess.Popen
    grpc_port: int
    enroll_port: int
    http_port: int
    log: Path

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def enroll_target(self) -> str:
        return f"127.0.0.1:{self.enroll_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGUSR1)  # soft stop: stop listening, let sessions end
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def render(backends: list[Backend], ports: tuple[int, int, int]) -> str:
    """The shipped config on loopback: ``ports`` are the (gRPC, enrolment, REST) frontends; the
    shipped ``controller-N`` servers become ``backends`` (more or fewer than two allowed)."""
    cfg = SHIPPED.read_text(encoding="utf-8")
    # as many connections as this process's file descriptors allow (haproxy refuses to start
    # with a maxconn it cannot hold); a deployment raises the limit instead
    found = re.search(r"^    maxconn (\d+)$", cfg, re.M)
    assert found, f"{SHIPPED.name} no longer sets a global maxconn"
    fds = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    fits = (
        min(int(found.group(1)), (fds - 200) // 2) if fds != resource.RLIM_INFINITY else int(found.group(1))
    )
    cfg = cfg.replace(found.group(0), f"    maxconn {fits}")
    for shipped, port in zip((GRPC, ENROL, HTTP), ports, strict=True):
        old = f"    bind :{shipped}\n"
        assert cfg.count(old) == 1, f"{SHIPPED.name} no longer has {old.strip()!r}"
        cfg = cfg.replace(old, f"    bind 127.0.0.1:{port}\n")
    for shipped, pick in ((GRPC, "grpc_port"), (ENROL, "enroll_port"), (HTTP, "http_port")):
        pattern = re.compile(rf"^    server controller-\d+ controller-\d+:{shipped}( check.*)$\n", re.M)
        found = pattern.findall(cfg)
        assert found, f"{SHIPPED.name} has no controller servers on port {shipped}"
        check = found[0]
        lines = "".join(
            f"    server controller-{i} 127.0.0.1:{getattr(b, pick)}"
            + check.replace(f"port {HTTP}", f"port {b.http_port}")
            + "\n"
            for i, b in enumerate(backends, 1)
        )
        cfg = pattern.sub("", cfg, count=len(found) - 1)
        cfg = pattern.sub(lambda _m, text=lines: text, cfg, count=1)
    return cfg


def start_haproxy(prefix: Path, backends: list[Backend]) -> Haproxy:
    """haproxy in the foreground (``-db``) over ``backends``; its log (stdout) in ``prefix``."""
    assert HAPROXY is not None
    prefix.mkdir(parents=True, exist_ok=True)
    ports = (free_port(), free_port(), free_port())
    cfg = prefix / "haproxy.cfg"
    cfg.write_text(render(backends, ports), encoding="utf-8")
    log = prefix / "haproxy.log"
    check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    if check.returncode != 0:
        raise RuntimeError(f"haproxy refused the config: {check.stdout}{check.stderr}")
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(cfg)], stdout=open(log, "wb"), stderr=subprocess.STDOUT, cwd=prefix
    )  # noqa: SIM115 - the file lives with the process
    try:
        for port in ports:
            wait_port(port, proc, log, name="haproxy")
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return Haproxy(proc, *ports, log=log)
