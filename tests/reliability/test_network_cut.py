"""Fault injection: the link between an agent and the controller is cut (a TCP proxy the test
controls sits between them) in the middle of a download and again in the middle of a rollout's
deploy; both rollouts complete once the link is back, the download resuming from what was on
disk."""

from __future__ import annotations

import time
from pathlib import Path

import harness as h
import numpy as np
import onnx
from onnx import numpy_helper
from tcp_proxy import TcpProxy


def _padded(onnx_path: Path, version: str, pad_bytes: int) -> Path:
    """The same classifier with an unused initializer, so its download takes a while."""
    model = onnx.load(str(onnx_path))
    model.graph.initializer.append(numpy_helper.from_array(np.ones(pad_bytes // 4, np.float32), "unused_pad"))
    onnx.save(model, str(onnx_path))
    h.testkit().write_manifest(onnx_path, version=version)
    return onnx_path


def _parts(agent_dir: Path) -> list[Path]:
    return (
        [p for p in (agent_dir / "artifacts").glob("*.part") if p.stat().st_size > 0]
        if (agent_dir / "artifacts").exists()
        else []
    )


def test_a_cut_link_mid_download_and_mid_rollout_then_both_complete(tmp_path: Path) -> None:
    kit = h.testkit()
    one = _padded(kit.make_artifact(tmp_path / "m", "one", version="colour:1"), "colour:1", 3 << 20)
    two = _padded(kit.make_artifact(tmp_path / "m", "two", version="colour:2", seed=1), "colour:2", 1 << 20)
    shard = h.shard_tar(kit.colour_folder(tmp_path / "eval", per_class=4), tmp_path / "eval.tar")
    # 256 KiB chunks: the agent keeps (and resumes from) whole chunks, and a 3 MiB model is several
    ctl = h.controller(tmp_path / "ctl", extra_env={"EDGELOOP_ARTIFACT_CHUNK_BYTES": str(256 << 10)}).start()
    proxy = TcpProxy(("127.0.0.1", ctl.grpc_port), rate_bytes_s=256 << 10)  # ~12 s for the first model
    port = h.free_port()
    agent_dir = tmp_path / "agent"
    agent = h.agent(agent_dir, proxy.address, name="cut-1", serve_port=port).start()
    api = ctl.api()
    try:
        h.import_model(api, one)
        h.import_model(api, two)
        eval_id = h.import_shard(api, shard)
        h.wait_until(lambda: h.online(api, "cut-1"), 60, "agent enrolled through the proxy")

        # 1. cut in the middle of the model's download
        mark = proxy.down_bytes
        first = h.rollout(api, "colour:1", eval_id)
        h.wait_until(
            lambda: proxy.down_bytes > mark + (1 << 20) and _parts(agent_dir), 60, "download under way"
        )
        proxy.cut()
        time.sleep(3)
        assert api.get(f"/rollouts/{first['id']}").json()["state"] == "running"  # waiting, not failed
        assert _parts(agent_dir), "the partial download is kept for the resume"
        proxy.restore()
        done = h.finished(api, first["id"], timeout=180)
        assert done["state"] == "succeeded", done
        assert "resuming" in agent.tail(500_000)  # it went on from the bytes on disk

        # 2. cut in the middle of the rollout: the deploy command is out, the device is working
        mark = proxy.down_bytes
        second = h.rollout(api, "colour:2", eval_id)
        h.wait_until(lambda: api.get(f"/rollouts/{second['id']}").json()["deployments"][0]["state"] != "pending",
                     30, "deploy sent")  # fmt: skip
        h.wait_until(lambda: proxy.down_bytes > mark + (256 << 10), 60, "the deploy's download under way")
        proxy.cut()
        time.sleep(3)
        assert api.get(f"/rollouts/{second['id']}").json()["state"] == "running"
        proxy.restore()
        done = h.finished(api, second["id"], timeout=180)
        assert done["state"] == "succeeded", done
        assert h.infer(port, "colour", "colour:2").model_version == "colour:2"
        assert proxy.cuts == 2
    finally:
        api.close()
        agent.stop()
        proxy.close()
        ctl.stop()
