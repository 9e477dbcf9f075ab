"""Restart-safe slots: a SIGKILLed agent serves the same model, by name and version, when it
comes back; the controller's view of the device (active, previous, the baseline its gate uses)
survives the agent's and then the controller's SIGKILL; and a switch back to the previous
version still works."""

from __future__ import annotations

from pathlib import Path

import harness as h


def test_agent_and_controller_sigkill_keep_slots_names_and_baseline(tmp_path: Path) -> None:
    good, better, bad, shard = h.colour_models(tmp_path)
    ctl = h.controller(tmp_path / "ctl").start()
    port = h.free_port()
    agent = h.agent(tmp_path / "agent", ctl.target, name="slot-1", serve_port=port).start()
    api = ctl.api()
    try:
        for model in (good, better, bad):
            h.import_model(api, model)
        eval_id = h.import_shard(api, shard)
        h.wait_until(lambda: h.online(api, "slot-1"), 60, "agent enrolled")
        for version in ("colour:1", "colour:2"):
            done = h.finished(api, h.rollout(api, version, eval_id)["id"])
            assert done["state"] == "succeeded", done
        before = h.device(api, "slot-1")
        assert (before["active_version"], before["previous_version"]) == ("colour:2", "colour:1")

        agent.kill()  # SIGKILL: no clean shutdown, nothing flushed on the way out
        state = h.read_json(tmp_path / "agent" / "slots" / "slots.json")
        assert state["active"]["engine_key"] and '"colour:2"' in state["active"]["manifest_json"]
        agent.start()
        answer = h.wait_until(lambda: _infer_or_none(port, "colour", "colour:2"), 60, "agent serves again")
        assert (answer.model_name, answer.model_version) == ("colour", "colour:2")  # not <sha>:<sha12>
        h.wait_until(lambda: h.online(api, "slot-1"), 30, "agent reconnected")
        after = h.device(api, "slot-1")
        assert (after["active_version"], after["previous_version"]) == ("colour:2", "colour:1")

        ctl.kill()
        ctl.start()  # same data dir and ports: the agent reconnects by itself
        api = ctl.api()
        h.wait_until(lambda: h.online(api, "slot-1"), 60, "agent reconnected to the new controller")
        after = h.device(api, "slot-1")
        assert (after["active_version"], after["previous_version"]) == ("colour:2", "colour:1")

        # switching back to the previous version works after both restarts
        r = api.post(f"/devices/{after['id']}/rollback", json={"to_version": "colour:1"})
        assert r.status_code == 202, r.text
        h.wait_until(lambda: h.serving(port, "colour") == "colour:1", 60, "rolled back to colour:1")
        assert h.infer(port, "colour", "colour:1").model_name == "colour"
        h.wait_until(lambda: h.device(api, "slot-1")["active_version"] == "colour:1", 30, "device table")
        # the gate still knows what colour:1 measured on this device: a 0 %-ish model fails it
        failed = h.finished(api, h.rollout(api, "colour:3", eval_id)["id"])
        assert failed["state"] == "aborted", failed
        message = failed["deployments"][0]["message"]
        assert "accuracy" in message and "no baseline" not in message, message
        assert h.infer(port, "colour", "colour:1").model_version == "colour:1"
    finally:
        api.close()
        agent.stop()
        ctl.stop()


def _infer_or_none(port: int, name: str, version: str):  # noqa: ANN202
    import grpc

    try:
        return h.infer(port, name, version, timeout=2)
    except grpc.RpcError:
        return None
