"""Two controller processes on one PostgreSQL behind a real haproxy (Debian's, with
deploy/haproxy/edgeloop.cfg as shipped): a real agent that knows only haproxy's addresses enrols
and holds its mutual-TLS stream through it (TCP pass-through: the controller checks the client
certificate itself); the controller that holds the stream is SIGKILLed; the agent reconnects
through haproxy to the survivor, a rollout still completes, and REST is answered through haproxy."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import httpx
import pytest
from ctl_helpers import ScriptedExecutor, manifest_json, serve_controller, start_agent, wait_until, write_onnx
from haproxy_helpers import Backend, needs_haproxy, start_haproxy

from controller.broker import free_port

pytestmark = [needs_haproxy, pytest.mark.postgres]
ENV = {"EDGELOOP_API_TOKEN": "lb-api", "EDGELOOP_ENROLLMENT_TOKEN": "lb-enrol"}


def _streams(http_port: int) -> float:
    """The controller's open agent streams (its public /metrics)."""
    text = httpx.get(f"http://127.0.0.1:{http_port}/metrics", timeout=5).text
    found = re.search(r"^edgeloop_control_streams (\S+)$", text, re.M)
    return float(found.group(1)) if found else 0.0


def test_agent_moves_to_the_surviving_controller_through_haproxy(tmp_path: Path, postgres_url: str) -> None:
    # one data dir for both (a shared volume in a deployment): one CA, one signing key, one
    # artifact store; each process has its own ports
    data = tmp_path / "data"
    backends = [Backend(free_port(), free_port(), free_port()) for _ in range(2)]
    procs = [
        serve_controller(
            data,
            postgres_url,
            tmp_path / f"c{i}.log",
            grpc_port=b.grpc_port,
            http_port=b.http_port,
            enroll_port=b.enroll_port,
            env=ENV,
        )
        for i, b in enumerate(backends)
    ]
    lb = start_haproxy(tmp_path / "haproxy", backends)
    api = httpx.Client(
        base_url=f"{lb.http_url}/api/v1", headers={"Authorization": "Bearer lb-api"}, timeout=30
    )
    agent = None
    try:
        agent = start_agent(
            lb.grpc_target,
            tmp_path / "agent",
            "lb-enrol",
            name="lb",
            tags=["lb"],
            executor=ScriptedExecutor(scores={"tiny:1": (80.0, 100.0)}),
            client_args={
                "enroll_target": lb.enroll_target,
                "ca_pem": (data / "keys" / "ca_cert.pem").read_bytes(),
            },
        )
        wait_until(lambda: sum(_streams(b.http_port) for b in backends) == 1, 20, "one stream held")
        held = next(i for i, b in enumerate(backends) if _streams(b.http_port) == 1)
        survivor = backends[1 - held]
        procs[held].send_signal(signal.SIGKILL)
        procs[held].wait(10)

        wait_until(lambda: _streams(survivor.http_port) == 1, 40, "the agent's stream on the survivor")
        with open(write_onnx(tmp_path / "m1.onnx", "1"), "rb") as fh:
            r = api.post(
                "/models/import", files={"onnx": fh, "manifest": ("m.json", manifest_json("tiny:1"))}
            )
        assert r.status_code == 201, r.text
        rollout = api.post("/rollouts/", json={"model_version": "tiny:1", "selector": {"tags": ["lb"]},
                                               "strategy": {"canary_share": 0, "waves": 1}}).json()  # fmt: skip
        wait_until(
            lambda: api.get(f"/rollouts/{rollout['id']}").json()["state"] != "running", 40, "rollout done"
        )
        assert api.get(f"/rollouts/{rollout['id']}").json()["state"] == "succeeded"
        assert agent.executor.active == "tiny:1"
        assert agent.executor.calls.count(("deploy", "tiny:1")) == 1
        devices = api.get("/devices/").json()
        assert [d["name"] for d in devices["data"]] == ["lb"]
        # haproxy saw the dead controller's checks fail and took it out of every backend (two
        # failed checks a second apart: the rollout may well have finished first)
        for backend in ("edgeloop_grpc", "edgeloop_enrol", "edgeloop_http"):
            down = f"{backend}/controller-{held + 1} is DOWN"
            wait_until(lambda down=down: down in lb.log.read_text(errors="replace"), 20, down)
    finally:
        if agent is not None:
            agent.stop()
        api.close()
        lb.stop()
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(20)
