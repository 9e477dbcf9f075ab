"""The rollout engine's pure rules: wave plans, gates, the primary accuracy metric."""

from __future__ import annotations

import pytest

from controller.models import Deployment, Result, Strategy
from controller.services.fleet import primary_accuracy
from controller.services.rollouts import gate, plan_waves


@pytest.mark.parametrize(
    ("n", "canary", "waves", "expected"),
    [
        (4, 0.25, 3, [0, 1, 2, 3]),
        (3, 0.3, 1, [0, 1, 1]),
        (10, 0.0, 2, [0] * 5 + [1] * 5),
        (1, 0.1, 4, [0]),
        (2, 0.5, 3, [0, 1]),
        (0, 0.1, 2, []),
    ],
)
def test_plan_waves(n: int, canary: float, waves: int, expected: list[int]) -> None:
    assert plan_waves(n, Strategy(canary_share=canary, waves=waves)) == expected


def test_plan_waves_1000() -> None:
    plan = plan_waves(1000, Strategy(canary_share=0.01, waves=4))
    assert plan.count(0) == 10 and max(plan) == 4 and sorted(plan) == plan
    assert all(plan.count(w) <= 248 for w in range(1, 5))


def _result(acc: float | None, fps: float | None, errors: list[str] | None = None) -> Result:
    return Result(device_id="d", hardware_class="c", model_version="v2", backend="ort", precision="fp32",
                  metrics={} if acc is None else {"top1": acc}, fps=fps, errors=errors or [])  # fmt: skip


@pytest.mark.parametrize(
    ("acc", "fps", "base_acc", "base_fps", "passed", "reason"),
    [
        (80.5, 150.0, 80.0, 100.0, True, "gate passed"),
        (79.1, 100.0, 80.0, 100.0, True, "gate passed"),  # within the 1-point drop
        (78.9, 100.0, 80.0, 100.0, False, "accuracy 78.90 < 80.00"),
        (80.0, 89.0, 80.0, 100.0, False, "fps 89.0 < 0.9 x 100.0"),
        (None, 100.0, 80.0, 100.0, False, "no accuracy measured"),
        (80.0, None, 80.0, 100.0, False, "no throughput measured"),
        (50.0, 10.0, None, None, True, "gate passed"),  # nothing to compare with: measured is enough
    ],
)
def test_gate(acc, fps, base_acc, base_fps, passed: bool, reason: str) -> None:  # noqa: ANN001
    d = Deployment(rollout_id="r", device_id="d", baseline_accuracy=base_acc, baseline_fps=base_fps)
    ok, why = gate(d, _result(acc, fps), Strategy(max_accuracy_drop=1.0, min_fps_ratio=0.9))
    assert ok is passed and reason in why, why


def test_gate_refuses_reported_errors_and_can_be_turned_off() -> None:
    d = Deployment(rollout_id="r", device_id="d", baseline_accuracy=90.0, baseline_fps=100.0)
    ok, why = gate(d, _result(95.0, 200.0, ["build: out of memory"]), Strategy())
    assert not ok and "out of memory" in why
    ok, _ = gate(d, _result(10.0, 1.0), Strategy(max_accuracy_drop=None, min_fps_ratio=None))
    assert ok


def test_primary_accuracy() -> None:
    assert primary_accuracy({"top1": 0.8125, "top5": 0.99}) == pytest.approx(81.25)  # fractions -> percent
    assert primary_accuracy({"map": 41.5, "map50": 60.0}) == pytest.approx(41.5)
    assert primary_accuracy({"top5": 0.9, "top1": 0.7}, preferred="top5") == pytest.approx(90.0)
    assert primary_accuracy({}) is None
