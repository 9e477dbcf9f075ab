"""The training recipe's parts on their own: the budget schedule and the weight EMA."""

from __future__ import annotations

import torch
from torch import nn

from trainer.ema import ModelEMA
from trainer.schedule import Budget, budget_scheduler


def _lrs(budget: Budget, steps: int, warmup: int, clock=None) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = budget_scheduler(opt, budget, warmup_steps=warmup)
    lrs = []
    for _ in range(steps):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        if clock:
            clock()
    return lrs


def test_image_budget_sets_the_horizon_not_the_epochs():
    # 400 epochs of 50 steps planned, but only 3200 images (100 steps of 32) in the budget
    budget = Budget(steps_per_epoch=50, epochs=400, batch_size=32, budget_images=3200)
    assert budget.total_steps == 100
    lrs = _lrs(budget, 100, warmup=10)
    peak = lrs.index(max(lrs))
    assert 5 <= peak <= 12  # warmup inside the budget
    assert lrs[-1] < 0.02  # decayed to the floor by the budget's end
    assert all(b <= a + 1e-12 for a, b in zip(lrs[peak:], lrs[peak + 1 :], strict=False))
    assert budget.exhausted(100) and not budget.exhausted(99)


def test_time_budget_decays_inside_the_time_limit():
    now = [0.0]

    def tick():
        now[0] += 1.0  # one second per step

    budget = Budget(steps_per_epoch=1000, epochs=400, batch_size=64, time_limit_s=60, clock=lambda: now[0])
    lrs = _lrs(budget, 60, warmup=4000, clock=tick)  # warmup capped at a fifth of the horizon
    assert max(lrs) > 0.95
    assert lrs.index(max(lrs)) <= 14
    assert lrs[-1] < 0.05
    assert budget.exhausted(60)


def test_warmup_longer_than_budget_is_capped():
    budget = Budget(steps_per_epoch=10, epochs=2, batch_size=8)
    lrs = _lrs(budget, 20, warmup=1000)
    assert max(lrs) > 0.95 and lrs.index(max(lrs)) <= 5


def test_ema_tracks_the_average_and_copies_integer_buffers():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model, decay=0.5, warmup_steps=1)
    start = ema.module[0].weight.clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].num_batches_tracked += 3
    ema.update(model)
    d = 0.5 * (1 - torch.exp(torch.tensor(-1.0)))
    expected = d * start + (1 - d) * (start + 1.0)
    assert torch.allclose(ema.module[0].weight, expected)
    assert int(ema.module[1].num_batches_tracked) == 3
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_batch_size_and_workers_default_from_the_machine(monkeypatch):
    from trainer import runtime
    from trainer.tasks.detection.spec import DetectionSpec
    from trainer.tasks.detection.training import auto_batch_size

    spec = DetectionSpec.model_validate({"dataset": {"root": "x"}})
    assert spec.train.batch_size is None and spec.train.num_workers is None
    assert auto_batch_size(spec, torch.device("cpu")) == 16
    given = DetectionSpec.model_validate({"dataset": {"root": "x"}, "train": {"batch_size": 6}})
    assert auto_batch_size(given, torch.device("cpu")) == 6
    monkeypatch.setattr(runtime, "cpu_cores", lambda: 16)
    assert runtime.auto_workers(torch.device("cuda")) == 15
    assert runtime.auto_workers(torch.device("cuda"), world_size=2) == 7
    assert runtime.auto_workers(torch.device("cpu")) == 2
