"""A learning-rate schedule whose horizon is the training budget, not ``train.epochs``.

With ``train.time_limit_s`` or ``train.budget_images`` set, a cosine laid out over
``train.epochs`` never decays before the budget stops the run (issue seen: 400 planned epochs,
20 finished, the learning rate still at its peak). Here progress is the larger of
``step / total_steps`` (the epochs, or the image budget in steps) and ``elapsed / time_limit_s``,
so warmup and decay both happen inside whichever budget ends first, and :meth:`exhausted` says
when to stop. Warmup is ``train.warmup_epochs`` worth of steps, but never more than
``max_warmup_fraction`` of the horizon.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch


class Budget:
    """Where a run stands in its budget: steps, images and seconds, whichever ends first."""

    def __init__(
        self,
        *,
        steps_per_epoch: int,
        epochs: int,
        batch_size: int,
        budget_images: int = 0,
        time_limit_s: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total_steps = max(1, steps_per_epoch * epochs)
        if budget_images:
            self.total_steps = min(self.total_steps, max(1, math.ceil(budget_images / batch_size)))
        self.time_limit_s = float(time_limit_s)
        self.clock = clock
        self.t0: float | None = None
        self.steps_done = 0  # counted by the caller's loss (for checks outside the scheduler)

    def start(self) -> None:
        if self.t0 is None:
            self.t0 = self.clock()

    def elapsed(self) -> float:
        return 0.0 if self.t0 is None else self.clock() - self.t0

    def progress(self, step: int) -> float:
        p = step / self.total_steps
        if self.time_limit_s:
            p = max(p, self.elapsed() / self.time_limit_s)
        return min(1.0, p)

    def exhausted(self, step: int) -> bool:
        return self.progress(step) >= 1.0


def budget_scheduler(
    opt: torch.optim.Optimizer,
    budget: Budget,
    *,
    warmup_steps: int,
    kind: str = "cosine",
    min_factor: float = 0.01,
    max_warmup_fraction: float = 0.2,
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step LambdaLR: linear warmup then cosine (or constant) over the budget's progress.
    Each parameter group keeps its own base lr (``train.backbone_lr_mult`` survives)."""
    warm = min(warmup_steps / budget.total_steps, max_warmup_fraction) if warmup_steps else 0.0

    def factor(step: int) -> float:
        if step > 0:  # LambdaLR asks for step 0 when it is built: the clock starts at the first step
            budget.start()
        p = budget.progress(step)
        if warm and p < warm:
            return max(min_factor, p / warm)
        if kind == "cosine":
            t = (p - warm) / max(1e-9, 1.0 - warm)
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)
