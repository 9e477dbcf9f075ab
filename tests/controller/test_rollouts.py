"""Rollouts with real agents: a canary rollout that passes its gates, one that aborts on a failed
accuracy gate (and rolls the canary back), pause/resume, and a controller killed mid-rollout
and restarted on the same DB that carries on where it stopped."""

from __future__ import annotations

from pathlib import Path

import pytest
from ctl_helpers import ScriptedExecutor, make_controller, manifest_json, start_agent, wait_until, write_onnx

from controller.models import DeploymentState, RolloutState, Strategy

TOKEN = "test-enrollment-token"


def _fleet(ctl, tmp_path: Path, n: int, scores: dict, **kw) -> list:
    return [
        start_agent(
            ctl.grpc_target,
            tmp_path / f"agent{i}",
            TOKEN,
            name=f"d{i}",
            hardware_class="cpu-2t",
            tags=["line-1"],
            executor=ScriptedExecutor(scores=dict(scores), **kw),
        )
        for i in range(n)
    ]


def _baseline(ctl, tmp_path: Path) -> None:
    ctl.import_model(write_onnx(tmp_path / "m1.onnx", "v1"), manifest_json("tiny:1"))
    ctl.import_model(write_onnx(tmp_path / "m2.onnx", "v2"), manifest_json("tiny:2", parent="tiny:1"))
    r = ctl.create_rollout(
        {
            "model_version": "tiny:1",
            "selector": {"tags": ["line-1"]},
            "strategy": {"canary_share": 0, "waves": 1},
        }
    )
    assert ctl.wait_for_rollout(r.id, timeout_s=30).state == RolloutState.succeeded


def test_canary_rollout_passes_its_gates(controller, tmp_path: Path) -> None:
    agents = _fleet(controller, tmp_path, 4, {"tiny:1": (80.0, 100.0), "tiny:2": (80.5, 150.0)})
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"], "hardware_classes": ["cpu-2t"]},
                "strategy": {
                    "canary_share": 0.25,
                    "waves": 3,
                    "max_failure_share": 0,
                    "max_accuracy_drop": 1.0,
                    "min_fps_ratio": 0.9,
                },
            }
        )
        assert [d.wave for d in r.deployments] == [0, 1, 2, 3]
        done = controller.wait_for_rollout(r.id, timeout_s=60)
        assert done.state == RolloutState.succeeded, done.reason
        assert done.counts == {"succeeded": 4}
        for d in done.deployments:
            assert d.previous_version == "tiny:1"
            assert d.baseline_accuracy == pytest.approx(80.0) and d.accuracy == pytest.approx(80.5)
            assert d.baseline_fps == pytest.approx(100.0) and d.fps == pytest.approx(150.0)
            assert d.message.startswith("gate passed")
        assert all(a.executor.active == "tiny:2" for a in agents)
        # waves went in order: the canary deployed before anyone else
        times = sorted(done.deployments, key=lambda d: d.updated_at)
        assert times[0].wave == 0
    finally:
        for a in agents:
            a.stop()


def test_the_rollout_strategy_carries_dynamic_batching_to_each_device(controller, tmp_path: Path) -> None:
    agents = _fleet(controller, tmp_path, 2, {"tiny:1": (80.0, 100.0), "tiny:2": (80.0, 100.0)})
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"]},
                "strategy": {"canary_share": 0, "waves": 1, "preferred_batch_sizes": [8, 4, 8],
                             "max_queue_delay_us": 2000},
            }
        )  # fmt: skip
        assert controller.wait_for_rollout(r.id, timeout_s=60).state == RolloutState.succeeded
        for a in agents:
            first, second = a.executor.deploys
            assert not first.HasField("batching")  # the baseline rollout named none: the agent's own
            assert list(second.batching.preferred_batch_sizes) == [4, 8]
            assert second.batching.max_queue_delay_us == 2000
        with pytest.raises(ValueError, match="preferred batch sizes must be 1-1024"):
            Strategy(preferred_batch_sizes=[0])
    finally:
        for a in agents:
            a.stop()


def test_gate_first_failure_never_switches_and_needs_no_rollback(controller, tmp_path: Path) -> None:
    agents = _fleet(controller, tmp_path, 3, {"tiny:1": (80.0, 100.0), "tiny:2": (72.0, 300.0)})
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"]},
                "strategy": {
                    "canary_share": 0.3,
                    "waves": 1,
                    "max_failure_share": 0,
                    "max_accuracy_drop": 1.0,
                },
            }
        )
        done = controller.wait_for_rollout(r.id, timeout_s=60)
        assert done.state == RolloutState.aborted
        assert "canary: 1/1 failed" in done.reason and "accuracy 72.00 < 80.00" in done.reason
        assert "never switched in" in done.reason
        states = sorted(d.state for d in done.deployments)
        assert states == [DeploymentState.failed, DeploymentState.skipped, DeploymentState.skipped]
        canary = next(a for a in agents if ("deploy", "tiny:2") in a.executor.calls)
        assert not any(c[0] in ("switch", "rollback") and c[1] != "tiny:1" for c in canary.executor.calls)
        assert ("rollback", "tiny:1") not in canary.executor.calls
        assert all(a.executor.active == "tiny:1" for a in agents), "nobody ever served tiny:2"
    finally:
        for a in agents:
            a.stop()


def test_gate_first_pass_switches_after_measuring(controller, tmp_path: Path) -> None:
    agents = _fleet(controller, tmp_path, 2, {"tiny:1": (80.0, 100.0), "tiny:2": (81.0, 100.0)})
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"]},
                "strategy": {"canary_share": 0, "waves": 1},
            }
        )
        done = controller.wait_for_rollout(r.id, timeout_s=60)
        assert done.state == RolloutState.succeeded, done.reason
        for a in agents:
            calls = a.executor.calls
            assert calls.index(("deploy", "tiny:2")) < calls.index(
                ("switch", "tiny:2")
            )  # measured, then served
            assert a.executor.active == "tiny:2"
        assert all(d.message.startswith("gate passed") for d in done.deployments)
    finally:
        for a in agents:
            a.stop()


def test_activate_then_watch_rolls_back_a_failed_gate(controller, tmp_path: Path) -> None:
    agents = _fleet(controller, tmp_path, 3, {"tiny:1": (80.0, 100.0), "tiny:2": (72.0, 300.0)})
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"]},
                "strategy": {"canary_share": 0.3, "waves": 1, "max_failure_share": 0, "max_accuracy_drop": 1.0,
                             "mode": "activate_then_watch"},
            }
        )  # fmt: skip
        done = controller.wait_for_rollout(r.id, timeout_s=60)
        assert done.state == RolloutState.aborted
        assert "canary: 1/1 failed" in done.reason and "accuracy 72.00 < 80.00" in done.reason
        states = sorted(d.state for d in done.deployments)
        assert states == [DeploymentState.rolled_back, DeploymentState.skipped, DeploymentState.skipped]
        assert all(a.executor.active == "tiny:1" for a in agents), (
            "the canary went back, the rest never moved"
        )
        canary = next(a for a in agents if ("rollback", "tiny:1") in a.executor.calls)
        assert ("deploy", "tiny:2") in canary.executor.calls
    finally:
        for a in agents:
            a.stop()


def test_activate_then_watch_succeeds_after_a_healthy_window(controller, tmp_path: Path) -> None:
    agents = _fleet(controller, tmp_path, 1, {"tiny:1": (80.0, 100.0), "tiny:2": (80.0, 100.0)})
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {"model_version": "tiny:2", "selector": {"tags": ["line-1"]},
             "strategy": {"canary_share": 0, "waves": 1, "mode": "activate_then_watch", "health_window_s": 1.0}}
        )  # fmt: skip
        wait_until(
            lambda: "watching health" in controller.get_rollout(r.id).deployments[0].message, 30, "watching"
        )
        assert agents[0].executor.active == "tiny:2"  # it serves during the window
        done = controller.wait_for_rollout(r.id, timeout_s=60)
        assert done.state == RolloutState.succeeded, done.reason
        assert "healthy for 1s" in done.deployments[0].message
    finally:
        for a in agents:
            a.stop()


def test_pause_and_resume(controller, tmp_path: Path) -> None:
    agents = _fleet(
        controller, tmp_path, 2, {"tiny:1": (80.0, 100.0), "tiny:2": (80.0, 100.0)}, deploy_delay_s=0.5
    )
    try:
        _baseline(controller, tmp_path)
        r = controller.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"]},
                "strategy": {"canary_share": 0.5, "waves": 1},
            }
        )
        from controller.services import rollouts

        wait_until(lambda: controller.get_rollout(r.id).counts.get("deploying", 0) >= 1, 20, "canary started")
        with controller.session() as s:
            rollouts.pause_rollout(session=s, rollout_id=r.id)
        wait_until(
            lambda: controller.get_rollout(r.id).counts.get("succeeded", 0) >= 1, 20, "canary finished"
        )
        import time

        time.sleep(0.5)
        paused = controller.get_rollout(r.id)
        assert paused.state == RolloutState.paused and paused.counts.get("pending") == 1, paused.counts
        with controller.session() as s:
            rollouts.resume_rollout(session=s, rollout_id=r.id)
        controller.wake()
        assert controller.wait_for_rollout(r.id, timeout_s=30).state == RolloutState.succeeded
    finally:
        for a in agents:
            a.stop()


def test_controller_killed_mid_rollout_carries_on_after_restart(tmp_path: Path, db_url: str) -> None:
    data = tmp_path / "data"
    ctl = make_controller(data, db_url)
    port = ctl.grpc_port
    agents = _fleet(ctl, tmp_path, 3, {"tiny:1": (80.0, 100.0), "tiny:2": (81.0, 120.0)}, deploy_delay_s=0.6)
    try:
        _baseline(ctl, tmp_path)
        r = ctl.create_rollout(
            {
                "model_version": "tiny:2",
                "selector": {"tags": ["line-1"]},
                "strategy": {"canary_share": 0.3, "waves": 2},
            }
        )
        wait_until(lambda: ctl.get_rollout(r.id).counts.get("succeeded", 0) >= 1, 30, "canary done")
        ctl.stop()  # killed mid-rollout: wave 1 is in flight or about to start
        mid = None
        ctl = make_controller(data, db_url, grpc_port=port)  # same DB, same data dir (same signing key)
        mid = ctl.get_rollout(r.id)
        assert mid.state == RolloutState.running and mid.counts.get("succeeded", 0) < 3
        done = ctl.wait_for_rollout(r.id, timeout_s=90)
        assert done.state == RolloutState.succeeded, (done.reason, done.counts)
        assert all(a.executor.active == "tiny:2" for a in agents)
        # each device deployed tiny:2 exactly once: resent commands are answered from the journal
        assert all(a.executor.calls.count(("deploy", "tiny:2")) == 1 for a in agents)
    finally:
        for a in agents:
            a.stop()
        ctl.stop()
