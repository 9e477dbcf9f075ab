"""The controller as a real process, SIGKILLed mid-rollout and started again on the same data dir
(SQLite file or PostgreSQL database, signing key, tokens) and ports: agents reconnect by themselves and the rollout
finishes, each device deploying once."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
from ctl_helpers import ScriptedExecutor, manifest_json, serve_controller, start_agent, wait_until, write_onnx

from controller.broker import free_port

ENV = {"EDGELOOP_API_TOKEN": "kill-api", "EDGELOOP_ENROLLMENT_TOKEN": "kill-enrol"}


def _serve(data: Path, db_url: str, grpc_port: int, http_port: int, log: Path) -> subprocess.Popen:
    return serve_controller(data, db_url, log, grpc_port=grpc_port, http_port=http_port, env=ENV)


def test_sigkill_mid_rollout_then_restart(tmp_path: Path, db_url: str) -> None:
    data, log = tmp_path / "data", tmp_path / "controller.log"
    grpc_port, http_port = free_port(), free_port()
    proc = _serve(data, db_url, grpc_port, http_port, log)
    api = httpx.Client(base_url=f"http://127.0.0.1:{http_port}/api/v1", headers={"Authorization": "Bearer kill-api"},
                       timeout=30)  # fmt: skip
    scores = {"tiny:1": (80.0, 100.0), "tiny:2": (80.0, 110.0)}
    agents = [
        start_agent(
            f"127.0.0.1:{grpc_port}",
            tmp_path / f"a{i}",
            "kill-enrol",
            name=f"k{i}",
            tags=["k"],
            executor=ScriptedExecutor(scores=dict(scores), deploy_delay_s=0.8),
            client_args={
                "enroll_target": f"127.0.0.1:{grpc_port + 1}",  # the CA made at first start
                "ca_pem": (data / "keys" / "ca_cert.pem").read_bytes(),
            },
        )  # fmt: skip
        for i in range(3)
    ]
    try:
        for v in ("1", "2"):
            with open(write_onnx(tmp_path / f"m{v}.onnx", v), "rb") as fh:
                r = api.post(
                    "/models/import", files={"onnx": fh, "manifest": ("m.json", manifest_json(f"tiny:{v}"))}
                )
            assert r.status_code == 201, r.text
        first = api.post("/rollouts/", json={"model_version": "tiny:1", "selector": {"tags": ["k"]},
                                             "strategy": {"canary_share": 0, "waves": 1}}).json()  # fmt: skip
        wait_until(lambda: api.get(f"/rollouts/{first['id']}").json()["state"] == "succeeded", 60, "baseline")
        r = api.post("/rollouts/", json={"model_version": "tiny:2", "selector": {"tags": ["k"]},
                                         "strategy": {"canary_share": 0.3, "waves": 2}}).json()  # fmt: skip
        wait_until(
            lambda: api.get(f"/rollouts/{r['id']}").json()["counts"].get("succeeded", 0) >= 1, 60, "canary"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        mid = [a.executor.active for a in agents]
        assert mid.count("tiny:2") < 3, "killed before the rollout finished"
        time.sleep(0.5)
        proc = _serve(data, db_url, grpc_port, http_port, log)
        wait_until(
            lambda: api.get(f"/rollouts/{r['id']}").json()["state"] != "running", 90, "rollout finished"
        )
        done = api.get(f"/rollouts/{r['id']}").json()
        assert done["state"] == "succeeded", done
        assert all(a.executor.active == "tiny:2" for a in agents)
        assert all(a.executor.calls.count(("deploy", "tiny:2")) == 1 for a in agents)
        # an agent that was idle when the controller died may still be in its reconnect backoff
        wait_until(
            lambda: api.get("/devices/", params={"online": "true"}).json()["count"] == 3, 60, "all back"
        )
        # the device table converges through heartbeats, which are flushed in batches: a heartbeat
        # noted just before a deploy finished can be written just after it, for one interval
        wait_until(
            lambda: {d["active_version"] for d in api.get("/devices/").json()["data"]} == {"tiny:2"},
            10,
            "device table shows tiny:2 everywhere",
        )
    finally:
        for a in agents:
            a.stop()
        api.close()
        proc.terminate()
        proc.wait(timeout=20)
