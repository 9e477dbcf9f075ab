"""Child processes that end with the controller: the broker it starts, trainer jobs.

``spawn`` starts a process that the kernel signals (``PR_SET_PDEATHSIG``, Linux) when the
thread that started it dies - a SIGKILLed controller included, where no ``finally`` runs - and
that checks at start whether its parent is already gone. Start children from a thread that lives
as long as they should (the main thread or a long-lived worker): the signal follows the thread,
not the process. Elsewhere than Linux the children are started as usual and ``stop`` ends them
on a clean stop only.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with(parent: int, sig: int) -> Callable[[], None]:
    def preexec() -> None:  # runs in the child, between fork and exec
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            os._exit(125)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def spawn(cmd: list[str], *, sig: int = signal.SIGTERM, **popen: Any) -> subprocess.Popen:
    """``subprocess.Popen(cmd, **popen)`` whose process receives ``sig`` when this one dies."""
    if sys.platform.startswith("linux"):
        popen["preexec_fn"] = _die_with(os.getpid(), sig)
    return subprocess.Popen(cmd, **popen)  # noqa: S603 - commands built by the controller


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> int | None:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def atomic_json(path: os.PathLike | str, value: object) -> None:
    """Write ``value`` as JSON to ``path`` atomically (temp file, fsync, rename): what a child
    hands its parent is whole or absent, even when the child is killed while writing."""
    import json
    from pathlib import Path

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(value, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
