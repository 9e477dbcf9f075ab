"""The controller with the real agent (agent.runtime.AgentRuntime: model slots, ONNX Runtime engines,
on-device evaluation and benchmark): a gated rollout that passes, then one whose canary
measures a worse model on the device in its inactive slot and fails the accuracy gate: it never serves."""

from __future__ import annotations

import importlib.util
import tarfile
from pathlib import Path

import pytest
from ctl_helpers import RunningAgent, trust, wait_until

from agent.fleet.client import FleetClient
from agent.fleet.daemon import FleetAgent

TESTKIT = Path(__file__).resolve().parents[1] / "agent" / "agent_testkit.py"
pytestmark = pytest.mark.skipif(
    not TESTKIT.exists(), reason="tests/agent/agent_testkit.py (tiny image models) missing"
)


def _testkit():  # noqa: ANN202
    spec = importlib.util.spec_from_file_location("agent_testkit_for_controller", TESTKIT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tar(folder: Path, dest: Path) -> Path:
    with tarfile.open(dest, "w") as tar:
        tar.add(folder, arcname="eval")
    return dest


def _real_agent(target: str, agent_dir: Path, name: str) -> RunningAgent:
    import threading

    from agent.bench import BenchConfig
    from agent.config import AgentSettings
    from agent.fleet.daemon import device_identity
    from agent.runtime import AgentRuntime

    settings = AgentSettings(agent_dir=agent_dir, threads=1, hardware_class="cpu-1t", name=name,
                             tags=("real",), serve_port=-1, http_port=-1)  # fmt: skip
    executor = AgentRuntime(settings, deploy_bench=BenchConfig(scenarios=("singlestream", "offline"),
                                                               duration_ms=300, min_queries=16)).start()  # fmt: skip
    client = FleetClient(
        target,
        agent_dir,
        device_identity(settings, executor.profile),
        "test-enrollment-token",
        **trust(target),
    )
    agent = FleetAgent(client, executor)
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(agent, errors), daemon=True)
    thread.start()
    wait_until(lambda: client.connected.is_set() or errors, 30, f"{name} connected")
    return RunningAgent(client, agent, executor, thread, errors)


def _run(agent: FleetAgent, errors: list) -> None:
    try:
        agent.run()
    except BaseException as exc:  # read by the test
        errors.append(exc)


def test_real_agents_gate_on_measured_accuracy(tmp_path: Path, sqlite_url: str) -> None:
    from ctl_helpers import make_controller

    kit = _testkit()
    good = kit.make_artifact(tmp_path / "models", "good", version="colour:1")
    bad = kit.make_artifact(tmp_path / "models", "bad", version="colour:2", scrambled=True)
    shard = _tar(kit.colour_folder(tmp_path / "eval", per_class=4), tmp_path / "eval.tar")
    ctl = make_controller(tmp_path / "data", sqlite_url)
    agents = []
    try:
        ctl.import_artifact_dir(good.parent)
        ctl.import_artifact_dir(bad.parent)
        eval_id = ctl.import_shard(shard, name="colour-eval").id
        agents = [_real_agent(ctl.grpc_target, tmp_path / f"agent{i}", f"real-{i}") for i in range(2)]
        body = {"selector": {"tags": ["real"]}, "evaluation_artifact_id": eval_id, "backend": "onnxruntime"}
        first = ctl.create_rollout(
            {**body, "model_version": "colour:1", "strategy": {"canary_share": 0.5, "waves": 1}}
        )
        done = ctl.wait_for_rollout(first.id, timeout_s=120)
        assert done.state.value == "succeeded", (done.reason, [d.message for d in done.deployments])
        assert all(d.accuracy == pytest.approx(100.0) and d.fps and d.fps > 0 for d in done.deployments)
        assert all(a.executor.state().active == "colour:1" for a in agents)

        second = ctl.create_rollout(
            {
                **body,
                "model_version": "colour:2",
                "strategy": {
                    "canary_share": 0.5,
                    "waves": 1,
                    "max_accuracy_drop": 1.0,
                    "min_fps_ratio": None,
                },
            }
        )
        done = ctl.wait_for_rollout(second.id, timeout_s=120)
        assert done.state.value == "aborted", done.reason
        assert "gate failed: accuracy" in done.reason and "< 100.00 (was)" in done.reason
        states = sorted(d.state.value for d in done.deployments)
        assert states == ["failed", "skipped"]  # gate first: measured in the inactive slot, never switched
        assert "never switched in" in done.reason
        assert all(a.executor.state().active == "colour:1" for a in agents), (
            "the real slots kept colour:1 active throughout"
        )
        matrix = ctl.results_matrix()
        versions = {(c.model_version, c.hardware_class) for c in matrix.cells}
        assert ("colour:1", "cpu-1t") in versions and ("colour:2", "cpu-1t") in versions
    finally:
        for a in agents:
            a.stop()
            a.executor.close()
        ctl.stop()
