"""Children end with the controller: the Mosquitto it starts, after SIGTERM and after SIGKILL,
and a REST trainer job, which runs in its own process (never inside the controller) and ends
when the controller is SIGKILLed mid-job."""

from __future__ import annotations

import shutil
from pathlib import Path

import harness as h
import psutil
import pytest


def _children(pid: int, needle: str) -> list[psutil.Process]:
    try:
        found = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in found:
        try:
            if needle in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def _gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs the mosquitto binary")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_broker_the_controller_starts_ends_with_it(tmp_path: Path, how: str) -> None:
    ctl = h.controller(tmp_path / "ctl")
    ctl.cmd.remove("--no-broker")  # let it start its own broker
    ctl.start()
    try:
        brokers = h.wait_until(lambda: _children(ctl.popen.pid, "mosquitto"), 30, "broker child")
        broker = brokers[0]
        ctl.stop() if how == "SIGTERM" else ctl.kill()
        h.wait_until(lambda: _gone(broker), 30, f"broker gone after the controller's {how}")
    finally:
        ctl.kill()


def test_a_rest_job_runs_in_a_child_that_ends_with_the_controller(tmp_path: Path) -> None:
    ctl = h.controller(tmp_path / "ctl").start()
    api = ctl.api()
    try:
        spec = {"data": {"root": str(tmp_path / "nowhere")}}
        r = api.post("/jobs/", json={"task": "classification", "action": "train", "spec": spec})
        assert r.status_code == 201, r.text
        job = r.json()
        child = h.wait_until(lambda: _children(ctl.popen.pid, "controller.job_child"), 60, "job child")[0]
        assert child.pid != ctl.popen.pid  # the trainer runs in a process of its own
        ctl.kill()  # SIGKILL mid-job: no finally runs in the controller
        h.wait_until(lambda: _gone(child), 30, "the job's process ended with the controller")
        ctl.start()
        api = ctl.api()
        done = api.get(f"/jobs/{job['id']}").json()
        assert done["state"] == "failed" and "controller stopped" in done["error"], done
    finally:
        api.close()
        ctl.stop()
