"""Local agent processes that stand in for device classes on one host (the demo's fleet).

Each emulated class differs in what really limits an edge device's speed: the number of CPU
threads ONNX Runtime may use, which cores the process may run on (``sched_setaffinity``), and for
the slowest class a duty cycle (SIGSTOP/SIGCONT) that leaves it a fraction of one core, like a
small ARM board next to an x86 box. The agents are the real ``edgeloop agent run`` daemon,
enrolled over gRPC like any device; only their hardware is emulated, and the report says so.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmulatedClass:
    name: str  # the hardware class the agents report
    threads: int  # ONNX Runtime intra-op threads
    cores: tuple[int, ...] = ()  # CPU affinity; () = any core
    duty: float = 1.0  # share of wall time the process may run (1.0 = not throttled)

    def describe(self) -> str:
        cores = ",".join(map(str, self.cores)) or "any"
        duty = "" if self.duty >= 1.0 else f", throttled to {self.duty:.0%} of the time"
        return f"{self.threads} thread(s) on core(s) {cores}{duty}"


def default_classes(cpu_count: int | None = None) -> list[EmulatedClass]:
    """Three classes that really differ in speed, fitted to this host's cores."""
    n = cpu_count or os.cpu_count() or 1
    last = n - 1
    return [
        EmulatedClass("cpu-2t", threads=min(2, n), cores=tuple(range(min(2, n)))),
        EmulatedClass("cpu-1t", threads=1, cores=(last,)),
        EmulatedClass("cpu-1t-throttled", threads=1, cores=(0,), duty=0.5),
    ]


class DutyCycle:
    """Stops and continues a process so it runs ``duty`` of each ``period_s`` (a slower CPU)."""

    def __init__(self, pid: int, duty: float, period_s: float = 0.04) -> None:
        self.pid, self.duty, self.period_s = pid, duty, period_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"duty-{pid}", daemon=True)

    def start(self) -> DutyCycle:
        self._thread.start()
        return self

    def _run(self) -> None:
        run_s, stop_s = self.period_s * self.duty, self.period_s * (1 - self.duty)
        try:
            while not self._stop.is_set():
                time.sleep(run_s)
                os.kill(self.pid, signal.SIGSTOP)
                time.sleep(stop_s)
                os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        try:
            os.kill(self.pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


@dataclass
class LocalAgent:
    name: str
    device_class: EmulatedClass
    process: subprocess.Popen
    log_path: Path
    duty: DutyCycle | None = None


@dataclass
class LocalFleet:
    """Starts ``per_class`` agents of each class; ``stop()`` ends them all."""

    controller_target: str
    enrollment_token: str
    work_dir: Path
    classes: list[EmulatedClass]
    per_class: int = 1
    agents: list[LocalAgent] = field(default_factory=list)
    ca_fingerprint: str = ""  # the controller CA the agents pin ("" = an --insecure controller)
    enroll_target: str = ""

    def start(self) -> LocalFleet:
        for cls in self.classes:
            for i in range(self.per_class):
                self.agents.append(self._spawn(cls, f"{cls.name}-{i + 1}"))
        return self

    def _spawn(self, cls: EmulatedClass, name: str) -> LocalAgent:
        agent_dir = self.work_dir / name
        agent_dir.mkdir(parents=True, exist_ok=True)
        log_path = agent_dir / "agent.log"
        env = {
            **os.environ,
            "EDGELOOP_HARDWARE_CLASS": cls.name,
            "EDGELOOP_AGENT_THREADS": str(cls.threads),
            "OMP_NUM_THREADS": str(cls.threads),
            "EDGELOOP_ENROLLMENT_TOKEN": self.enrollment_token,  # not on the command line (ps shows it)
        }
        if self.ca_fingerprint:
            env |= {"EDGELOOP_CA_FINGERPRINT": self.ca_fingerprint, "EDGELOOP_ENROLL": self.enroll_target}
        else:
            env["EDGELOOP_INSECURE"] = "1"
        cmd = [
            sys.executable, "-m", "edgeloop.cli", "agent", "run",
            "--controller", self.controller_target,
            "--agent-dir", str(agent_dir),
            "--name", name,
            "--tags", f"demo,{cls.name}",
            "--hardware-class", cls.name,
            "--threads", str(cls.threads),
            "--serve-port", "-1",
            "--http-port", "-1",
        ]  # fmt: skip
        with log_path.open("ab") as out:
            proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        if cls.cores and hasattr(os, "sched_setaffinity"):
            usable = sorted(os.sched_getaffinity(0))
            cores = {usable[c % len(usable)] for c in cls.cores}
            try:
                os.sched_setaffinity(proc.pid, cores)
            except OSError as exc:  # containers may forbid it; the thread count still differs
                log.warning("could not pin %s to cores %s: %s", name, cores, exc)
        duty = DutyCycle(proc.pid, cls.duty).start() if cls.duty < 1.0 else None
        return LocalAgent(name, cls, proc, log_path, duty)

    def check_alive(self) -> None:
        """Raise with the agent's log tail when one of them exited."""
        for a in self.agents:
            code = a.process.poll()
            if code is not None:
                tail = a.log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
                raise RuntimeError(f"agent {a.name} exited with {code}; its log ends:\n{tail}")

    def stop(self) -> None:
        for a in self.agents:
            if a.duty:
                a.duty.stop()
            if a.process.poll() is None:
                a.process.terminate()
        for a in self.agents:
            try:
                a.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                a.process.kill()
                a.process.wait(timeout=5)
