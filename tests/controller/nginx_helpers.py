"""A real nginx (Debian's package) started by a test, with deploy/nginx/edgeloop-artifacts.conf as
shipped (only its listen address, root, secret file and log path replaced), and a tiny TCP proxy
the test controls to cut a transfer in the middle."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controller.broker import free_port

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "edgeloop-artifacts.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
needs_nginx = pytest.mark.skipif(
    NGINX is None, reason="nginx not installed (scripts/test.sh installs Debian's package)"
)


@dataclass
class Nginx:
    proc: subprocess.Popen
    port: int
    prefix: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/artifacts"

    def access_log(self) -> list[str]:
        path = self.prefix / "access.log"
        return path.read_text(encoding="utf-8").splitlines() if path.exists() else []

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: workers finish, master exits
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def wait_port(port: int, proc: subprocess.Popen, log: Path, *, name: str, timeout: float = 15.0) -> None:
    """Until ``proc`` (a server started by a test: nginx, haproxy) listens on ``port``; its log's
    tail in the error if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{name} did not listen on {port}")


def start_nginx(
    prefix: Path, root: Path, secret: str, *, worker_user: str = "root", worker_connections: int = 256
) -> Nginx:
    """nginx serving ``root/artifacts/`` with secure_link checked against ``secret``. Run as root,
    its workers run as ``worker_user`` (pytest's tmp dirs are 0700: "root" reaches them; another
    user, as in a real deployment, needs a ``root`` it can traverse)."""
    assert NGINX is not None
    prefix.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = SHIPPED.read_text(encoding="utf-8")
    replacements = {
        "listen 8080;": f"listen 127.0.0.1:{port};",
        "root /var/lib/edgeloop;": f"root {root};",
        "include /etc/nginx/edgeloop-url-secret.conf;": f"include {prefix / 'secret.conf'};",
        "access_log /var/log/nginx/edgeloop-artifacts.log;": f"access_log {prefix / 'access.log'} edgeloop;",
    }
    for old, new in replacements.items():
        assert old in server, f"{SHIPPED.name} no longer has {old!r}"
        server = server.replace(old, new)
    (prefix / "server.conf").write_text(server, encoding="utf-8")
    (prefix / "secret.conf").write_text(f'set $edgeloop_url_secret "{secret}";\n', encoding="utf-8")
    temp = {n: prefix / n for n in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for d in temp.values():
        d.mkdir(exist_ok=True)
    user = f"user {worker_user};\n" if os.geteuid() == 0 else ""
    (prefix / "nginx.conf").write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} info;
worker_rlimit_nofile {2 * worker_connections + 64};
events {{ worker_connections {worker_connections}; }}
http {{
    log_format edgeloop '$status "$request" "$http_range" $body_bytes_sent';
    client_body_temp_path {temp["body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    include {prefix / "server.conf"};
}}
""",
        encoding="utf-8",
    )
    log = prefix / "error.log"
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-e", str(log), "-c", str(prefix / "nginx.conf")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_port(port, proc, log, name="nginx")
    except BaseException:
        proc.kill()
        proc.wait(5)
        raise
    return Nginx(proc, port, prefix)


@dataclass
class CuttingProxy:
    """Forwards loopback TCP to ``upstream``; the first ``cut_connections`` connections are closed
    after ``cut_after`` bytes from the server (a network cut in the middle of a transfer)."""

    upstream: int
    cut_after: int
    cut_connections: int = 1
    port: int = 0
    connections: int = 0
    _server: socket.socket | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> CuttingProxy:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        t = threading.Thread(target=self._accept, daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            self.connections += 1
            limit = self.cut_after if self.connections <= self.cut_connections else None
            up = socket.create_connection(("127.0.0.1", self.upstream))
            threading.Thread(target=self._pipe, args=(client, up, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, client, limit), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while data := src.recv(65536):
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: limit - sent])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        if self._server is not None:
            self._server.close()
