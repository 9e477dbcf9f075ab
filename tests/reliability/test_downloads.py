"""Downloads that fail verification: a damaged partial file is discarded and fetched again from
byte 0 (the deploy ends deployed); bytes that never verify fail the deploy after a bounded number
of attempts, with the reason in the command's status and the rollout."""

from __future__ import annotations

import hashlib
from pathlib import Path

import harness as h


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_corrupted_partial_download_ends_deployed(tmp_path: Path) -> None:
    good, _, _, shard = h.colour_models(tmp_path)
    sha = hashlib.sha256(good.read_bytes()).hexdigest()
    # what an interrupted earlier download left, with one byte flipped on the disk since
    part = tmp_path / "agent" / "artifacts" / f"{sha}.onnx.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _flip(part, 100)
    ctl = h.controller(tmp_path / "ctl").start()
    port = h.free_port()
    agent = h.agent(tmp_path / "agent", ctl.target, name="dl-1", serve_port=port).start()
    api = ctl.api()
    try:
        h.import_model(api, good)
        eval_id = h.import_shard(api, shard)
        h.wait_until(lambda: h.online(api, "dl-1"), 60, "agent enrolled")
        done = h.finished(api, h.rollout(api, "colour:1", eval_id)["id"])
        assert done["state"] == "succeeded", done
        assert h.infer(port, "colour", "colour:1").model_version == "colour:1"
        final = part.with_name(f"{sha}.onnx")
        assert hashlib.sha256(final.read_bytes()).hexdigest() == sha and not part.exists()
        assert "fetching again from 0" in agent.tail(200_000)
    finally:
        api.close()
        agent.stop()
        ctl.stop()


def test_bytes_that_never_verify_fail_the_deploy_with_the_reason(tmp_path: Path) -> None:
    good, _, _, shard = h.colour_models(tmp_path)
    ctl = h.controller(tmp_path / "ctl").start()
    port = h.free_port()
    agent = h.agent(tmp_path / "agent", ctl.target, name="dl-2", serve_port=port).start()
    api = ctl.api()
    try:
        model = h.import_model(api, good)
        eval_id = h.import_shard(api, shard)
        stored = [
            p for p in (tmp_path / "ctl").rglob("*") if p.is_file() and p.read_bytes() == good.read_bytes()
        ]
        assert len(stored) == 1, stored
        _flip(stored[0], 200)  # the controller's disk now serves bytes that differ from the signed digest
        h.wait_until(lambda: h.online(api, "dl-2"), 60, "agent enrolled")
        done = h.finished(api, h.rollout(api, model["version"], eval_id)["id"])
        assert done["state"] == "aborted", done
        message = done["deployments"][0]["message"]
        assert "3 attempts failed verification" in message and "sha256 mismatch" in message, message
        assert not list((tmp_path / "agent" / "artifacts").glob("*.onnx"))  # nothing unverified kept
        assert h.serving(port, "colour") == ""  # and nothing unverified serves
    finally:
        api.close()
        agent.stop()
        ctl.stop()
