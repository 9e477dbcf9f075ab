"""Nothing lost at QoS 1: the controller SIGKILLed while an agent publishes events, then 0 of N
events lost (and none stored twice); an agent SIGKILLed while the broker is down, then its
spooled events delivered once both are back, with the time they happened. Real Mosquitto, real
controller and agent processes."""

from __future__ import annotations

import json
import shutil
import sqlite3
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import harness as h
import pytest

from agent.telemetry import Telemetry
from controller.broker import start_local_broker

pytestmark = pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs the mosquitto binary")


def _rows(db: Path, sql: str, *args: object) -> list[tuple]:
    with sqlite3.connect(db, timeout=30) as conn:
        return conn.execute(sql, args).fetchall()


def _device_id(agent_dir: Path) -> str:
    return h.read_json(agent_dir / "fleet" / "credentials.json")["device_id"]


def _epoch(text: str) -> float:
    ts = datetime.fromisoformat(text)
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


def test_controller_sigkilled_while_an_agent_publishes_loses_no_event(tmp_path: Path) -> None:
    broker = start_local_broker("mosquitto")
    ctl = h.controller(tmp_path / "ctl", mqtt=broker.url).start()
    agent = h.agent(tmp_path / "agent", ctl.target, name="tel-1", serve_port=-1, mqtt=broker.url).start()
    db = tmp_path / "ctl" / "edgeloop.db"
    publisher: Telemetry | None = None
    try:
        api = ctl.api()
        h.wait_until(lambda: h.online(api, "tel-1"), 60, "agent enrolled")
        device_id = _device_id(tmp_path / "agent")
        h.wait_until(lambda: _rows(db, "SELECT telemetry_state FROM device") == [("online",)], 30,
                     "controller subscribed (it has seen the agent's state)")  # fmt: skip
        # the agent's telemetry library, publishing as that device while the controller dies
        publisher = Telemetry(
            broker.url, device_id, spool_dir=tmp_path / "pub-spool", client_id="rel-publisher"
        ).start(wait_s=10)
        n = 120

        def publish() -> None:
            for i in range(n):
                publisher.event("benchmarked", "colour:1", {"i": i})
                time.sleep(0.02)

        thread = threading.Thread(target=publish)
        thread.start()
        h.wait_until(lambda: _rows(db, "SELECT count(*) FROM deviceevent")[0][0] >= 10, 30, "events stored")
        ctl.kill()  # SIGKILL while events keep coming
        time.sleep(1.0)
        ctl.start()
        thread.join()
        h.wait_until(lambda: len(publisher.spool) == 0, 30, "the broker acknowledged every event")
        h.wait_until(lambda: _rows(db, "SELECT count(*) FROM deviceevent WHERE event='benchmarked'")[0][0] >= n,
                     60, "all events stored")  # fmt: skip
        time.sleep(1.0)  # a duplicate would arrive now
        details = _rows(db, "SELECT details FROM deviceevent WHERE event='benchmarked'")
        seen = sorted(json.loads(d[0])["i"] for d in details)
        assert seen == list(range(n))  # 0 of n lost, none twice
    finally:
        if publisher is not None:
            publisher.stop()
        agent.stop()
        ctl.stop()
        broker.stop()


def test_agent_sigkilled_while_the_broker_is_down_delivers_its_spool_with_original_times(
    tmp_path: Path,
) -> None:
    good, _, _, shard = h.colour_models(tmp_path)
    broker = start_local_broker("mosquitto")
    ctl = h.controller(tmp_path / "ctl", mqtt=broker.url).start()
    agent = h.agent(tmp_path / "agent", ctl.target, name="tel-2", serve_port=-1, mqtt=broker.url).start()
    db = tmp_path / "ctl" / "edgeloop.db"
    try:
        api = ctl.api()
        h.import_model(api, good)
        eval_id = h.import_shard(api, shard)
        h.wait_until(lambda: h.online(api, "tel-2"), 60, "agent enrolled")
        h.wait_until(
            lambda: _rows(db, "SELECT telemetry_state FROM device") == [("online",)], 30, "telemetry up"
        )
        broker.stop()  # the broker is away: the deploy's events can only go to the spool
        started = time.time()
        done = h.finished(api, h.rollout(api, "colour:1", eval_id)["id"])
        assert done["state"] == "succeeded", done
        spooled = list((tmp_path / "agent" / "telemetry-spool").glob("*.json"))
        assert spooled, "the deploy's events wait on disk"
        agent.kill()  # SIGKILL before the broker is back
        deployed = time.time()
        time.sleep(1.5)
        subscribed = ctl.tail(10**7).count("telemetry subscribed")
        broker.start()  # same port; it kept nothing (persistence off), so the controller's
        # session must exist again before the agent delivers (a broker with persistence keeps it)
        h.wait_until(
            lambda: ctl.tail(10**7).count("telemetry subscribed") > subscribed, 60, "controller back"
        )
        agent.start()
        h.wait_until(lambda: not list((tmp_path / "agent" / "telemetry-spool").glob("*.json")), 60,
                     "the restarted agent delivered its spool")  # fmt: skip
        h.wait_until(lambda: _rows(db, "SELECT count(*) FROM deviceevent WHERE event='switched'")[0][0] >= 1,
                     30, "events stored")  # fmt: skip
        rows = _rows(db, "SELECT event, ts FROM deviceevent WHERE event IN ('built', 'switched')")
        assert {e for e, _ in rows} == {"built", "switched"}
        for event, ts in rows:  # the time it happened (before the kill), not the delivery time
            assert started - 1 <= _epoch(ts) <= deployed, (event, ts, started, deployed)
    finally:
        agent.stop()
        ctl.stop()
        broker.stop()
