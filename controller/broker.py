"""Find or start an MQTT broker for the embedded default (demo, tests, one-host installs).

Order: a URL the user gave; else a Mosquitto binary on PATH, started on a free loopback port
with a throw-away config; else the pure-Python amqtt broker in a child process. Each is a real
MQTT 3.1.1 broker, so what the agent and controller do against it is what they do against a
production broker named by URL.
"""

from __future__ import annotations

import getpass
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from controller.children import spawn

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_for_port(host: str, port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s")


@dataclass
class LocalBroker:
    """A broker process this program owns; ``restart()`` keeps the same port (for outage tests)."""

    kind: str  # "mosquitto" | "amqtt"
    host: str
    port: int
    workdir: Path
    proc: subprocess.Popen | None = field(default=None, repr=False)
    # password file and ACL (Mosquitto only): anonymous clients are refused; None = open broker
    passwd: Path | None = None
    acl: Path | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _command(self) -> list[str]:
        if self.kind == "mosquitto":
            conf = self.workdir / "mosquitto.conf"
            auth = (
                f"allow_anonymous false\npassword_file {self.passwd}\nacl_file {self.acl}\n"
                if self.passwd is not None and self.acl is not None
                else "allow_anonymous true\n"
            )
            conf.write_text(
                f"per_listener_settings false\n{auth}listener {self.port} {self.host}\npersistence false\n"
                "max_queued_messages 10000\n"
                # run as our own user: started as root, Mosquitto would switch to its own user, who
                # cannot read the 0600 password file, and a change of user clears PR_SET_PDEATHSIG
                f"user {getpass.getuser()}\n",
                encoding="utf-8",
            )
            return [shutil.which("mosquitto") or "mosquitto", "-c", str(conf)]
        return [sys.executable, "-m", "controller.broker", "--host", self.host, "--port", str(self.port)]

    def start(self) -> LocalBroker:
        log_file = open(self.workdir / f"{self.kind}.log", "ab")  # noqa: SIM115 - lives with the process
        # ends with the controller even when it is SIGKILLed (no finally runs then)
        self.proc = spawn(self._command(), stdout=log_file, stderr=subprocess.STDOUT)
        try:
            wait_for_port(self.host, self.port)
        except TimeoutError:
            self.stop()
            raise
        log.info("started %s broker on %s", self.kind, self.url)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def reload(self) -> None:
        """Re-read the password file and ACL (Mosquitto reloads them on SIGHUP)."""
        if self.proc is not None and self.proc.poll() is None and self.kind == "mosquitto":
            self.proc.send_signal(signal.SIGHUP)

    def restart(self, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()


def start_local_broker(
    prefer: str = "auto",
    host: str = "127.0.0.1",
    port: int | None = None,
    *,
    passwd: Path | None = None,
    acl: Path | None = None,
) -> LocalBroker:
    """Start a broker on loopback. ``prefer``: auto | mosquitto | amqtt. With ``passwd`` and
    ``acl`` (what ``controller.broker_auth.BrokerAccounts`` writes) it refuses anonymous
    clients and enforces the ACL; that needs Mosquitto (the amqtt fallback is refused then)."""
    workdir = Path(tempfile.mkdtemp(prefix="edgeloop-broker-"))
    kind = prefer
    if prefer == "auto":
        kind = "mosquitto" if shutil.which("mosquitto") else "amqtt"
    if kind == "mosquitto" and not shutil.which("mosquitto"):
        raise RuntimeError("mosquitto is not installed (apt-get install mosquitto), use prefer='amqtt'")
    if passwd is not None and kind != "mosquitto":
        raise RuntimeError(
            "per-device broker accounts need Mosquitto (apt-get install mosquitto); the embedded "
            "amqtt broker cannot enforce them: pass --mqtt to use your own broker"
        )
    broker = LocalBroker(
        kind=kind, host=host, port=port or free_port(host), workdir=workdir, passwd=passwd, acl=acl
    )
    return broker.start()


def _run_amqtt(host: str, port: int) -> None:
    """Child-process entry: serve amqtt until terminated."""
    import asyncio

    from amqtt.broker import Broker

    config = {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "sys_interval": 0,
        "auth": {"allow-anonymous": True},
        "topic-check": {"enabled": False},
    }

    async def serve() -> None:
        broker = Broker(config)
        await broker.start()
        while True:
            await asyncio.sleep(3600)

    asyncio.run(serve())


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Run the embedded amqtt broker.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("EDGELOOP_BROKER_PORT", "1883")))
    a = parser.parse_args()
    _run_amqtt(a.host, a.port)
