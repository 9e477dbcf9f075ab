"""Two ``controller serve`` processes on one PostgreSQL, sharing one data dir (CA, signing key,
artifacts), with mutual TLS; three real agents given both addresses. A rollout starts, one
controller is SIGKILLed in the middle of it, the other completes it: every agent is connected
again (to the survivor, with the certificate it enrolled with) and no step was done twice
(one deploy and one switch command per device, read from the database)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import harness as h
import pytest
import sqlalchemy as sa

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def _tls_controller(data: Path, name: str, db_url: str) -> h.ControllerProc:
    ctl = h.controller(data, extra_env={"EDGELOOP_DB_URL": db_url, "EDGELOOP_CONTROLLER_ID": name})
    ctl.cmd = [c for c in ctl.cmd if c != "--insecure"]  # the CA of the shared data dir, for both
    ctl.log = data.parent / f"{name}.log"
    return ctl


def _tls_agent(agent_dir: Path, targets: list[str], name: str, ca: Path) -> h.Proc:
    proc = h.agent(agent_dir, ",".join(targets), name=name, extra=["--ca-file", str(ca)])
    proc.cmd = [c for c in proc.cmd if c != "--insecure"]
    return proc


def test_one_of_two_controllers_killed_mid_rollout(tmp_path: Path, postgres_url: str) -> None:
    _, better, _, shard = h.colour_models(tmp_path)
    data = tmp_path / "data"
    a = _tls_controller(data, "ctl-a", postgres_url).start()  # makes the CA and key first
    b = _tls_controller(data, "ctl-b", postgres_url).start()
    agents: list[h.Proc] = []
    api_b = b.api()
    try:
        api_a = a.api()
        h.import_model(api_a, better)
        eval_id = h.import_shard(api_a, shard)
        ca = data / "keys" / "ca_cert.pem"
        for i in range(3):  # two start on A, one on B; each knows both
            order = [a.target, b.target] if i < 2 else [b.target, a.target]
            agents.append(_tls_agent(tmp_path / f"agent{i}", order, f"two-{i}", ca).start())
        names = [f"two-{i}" for i in range(3)]
        h.wait_until(lambda: all(h.online(api_b, n) for n in names), 90, "three agents online")
        # a canary (one device), then the other two; A is killed when the canary has succeeded
        rollout = h.rollout(api_a, "colour:2", eval_id, canary_share=0.34, waves=1)
        h.wait_until(
            lambda: any(d["state"] == "succeeded" for d in api_b.get(f"/rollouts/{rollout['id']}").json()["deployments"]),
            120, "the canary succeeded",  # far less unless the host is overloaded
        )  # fmt: skip
        api_a.close()
        a.kill()
        done = h.finished(api_b, rollout["id"], timeout=120)
        assert done["state"] == "succeeded", done
        assert {d["state"] for d in done["deployments"]} == {"succeeded"}, done["deployments"]
        h.wait_until(lambda: all(h.online(api_b, n) for n in names), 60, "every agent connected again")
        engine = sa.create_engine(postgres_url)
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT device_id, kind FROM command WHERE rollout_id = :r"), {"r": rollout["id"]}
            ).all()
            holders = set(conn.execute(sa.text("SELECT controller_id FROM device")).scalars())
        engine.dispose()
        per_step = Counter((device, str(kind)) for device, kind in rows)
        assert len(per_step) == 6 and set(per_step.values()) == {1}, per_step  # deploy + switch each
        assert holders == {"ctl-b"}, holders
        moved = [p for p in agents if "moving to" in p.tail(100_000)]
        assert len(moved) >= 2, "the agents on A failed over"  # the two that started on A
        assert all(p.tail(100_000).count("registered as") == 1 for p in agents)  # the same identity
        assert all(h.device(api_b, n)["active_version"] == "colour:2" for n in names)
    finally:
        api_b.close()
        for p in agents:
            p.stop()
        a.kill()
        b.stop()
