"""The training loop every task shares: optimiser, schedule, AMP, channels_last, DDP, progress.

``TrainStep`` is the hot path (forward, loss, backward, optimiser step) and is what
``benchmarks/train_throughput.py`` times against a plain PyTorch loop. It never synchronises
with the GPU: the loss is read back only every ``train.log_interval`` steps for the progress bar.
``fit`` runs epochs around it: per-epoch validation, ``status.json`` progress, ``last.pth``
for resume and the best model. A task supplies the loss (``loss_fn(model, images, targets)``),
so distillation plugs in its own without another loop. Opt-in for a task: parameter groups
(a lower backbone learning rate), a :class:`trainer.schedule.Budget` that sets the schedule's
horizon and ends the run (the epoch in progress is validated and kept), and a weight EMA
(:class:`trainer.ema.ModelEMA`) that is what gets validated and saved.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trainer.ema import ModelEMA
from trainer.runtime import RunContext, amp_dtype, is_distributed
from trainer.schedule import Budget, budget_scheduler
from trainer.spec import TrainSpec

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, torch.Tensor, Any], torch.Tensor]


def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    crit = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss_fn(model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return crit(model(images), targets)

    return loss_fn


def make_optimizer(
    params: Iterable[nn.Parameter] | Iterable[dict[str, Any]], cfg: TrainSpec, *, fused: bool = False
) -> torch.optim.Optimizer:
    """AdamW or SGD over ``params`` (tensors, or parameter groups with their own ``lr``).
    ``fused`` (CUDA only) runs AdamW's update as one kernel per dtype instead of a few per tensor."""
    items: list[Any] = list(params)  # all parameters or all groups: the first item says which
    if items and isinstance(items[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in items]
        params = [g for g in groups if g["params"]]
    else:
        params = [p for p in items if p.requires_grad]
    if cfg.optimizer.value == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)
    return torch.optim.SGD(
        params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True
    )


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainSpec, steps_per_epoch: int, epochs: int):
    """Per-step LambdaLR: linear warmup, then cosine / step / constant."""
    total = max(1, steps_per_epoch * epochs)
    warm = steps_per_epoch * cfg.warmup_epochs

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.scheduler.value == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
        if cfg.scheduler.value == "step":
            return 0.1 ** ((step // steps_per_epoch) // cfg.step_size)
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(opt, factor)


def backbone_param_groups(
    model: nn.Module, backbone_params: Iterable[nn.Parameter], cfg: TrainSpec
) -> list[dict[str, Any]] | None:
    """``train.backbone_lr_mult``: ``backbone_params`` at ``lr x mult``, the rest of ``model`` at
    ``lr`` (None when the multiplier is 1: plain ``model.parameters()``). A pretrained backbone
    then moves less than the freshly initialised head and neck."""
    if cfg.backbone_lr_mult == 1.0:
        return None
    body = set(map(id, backbone_params))
    backbone = [p for p in model.parameters() if id(p) in body]
    rest = [p for p in model.parameters() if id(p) not in body]
    return [{"params": rest}, {"params": backbone, "lr": cfg.lr * cfg.backbone_lr_mult}]


@dataclass
class TrainStep:
    """One optimisation step; returns the loss as a tensor (no host sync)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: LossFn
    device: torch.device
    amp: bool = True
    channels_last: bool = False
    scaler: torch.amp.GradScaler | None = field(default=None)
    clip_grad_norm: float = 0.0  # > 0: gradients clipped to this total norm (RT-DETR's recipe: 0.1)

    def __post_init__(self) -> None:
        self.dtype = amp_dtype(self.device, self.amp)
        if self.scaler is None:
            self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

    def autocast(self):
        if self.dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.dtype)

    def to_device(self, images: torch.Tensor, targets: Any) -> tuple[torch.Tensor, Any]:
        images = images.to(self.device, non_blocking=True, memory_format=self.memory_format)
        if isinstance(targets, torch.Tensor):
            targets = targets.to(self.device, non_blocking=True)
        return images, targets

    def __call__(self, images: torch.Tensor, targets: Any) -> torch.Tensor:
        with self.autocast():
            loss = self.loss_fn(self.model, images, targets)
        self.optimizer.zero_grad(set_to_none=True)
        scaler: torch.amp.GradScaler = self.scaler  # type: ignore[assignment]  # set in __post_init__
        scaler.scale(loss).backward()
        if self.clip_grad_norm:
            scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad_norm, foreach=True)
        scaler.step(self.optimizer)
        scaler.update()
        return loss.detach()


@dataclass
class FitState:
    epoch: int = 0  # epochs completed
    best_metric: float = -1.0
    history: list[dict[str, Any]] = field(default_factory=list)


def _progress(iterable, total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(
        iterable,
        total=total,
        desc=desc,
        disable=not enabled,
        dynamic_ncols=True,
        leave=False,
        mininterval=1.0,
    )


def train_one_epoch(
    step: TrainStep,
    loader,
    scheduler,
    *,
    epoch: int,
    epochs: int,
    log_interval: int,
    max_steps: int = 0,
    show_progress: bool = True,
    ema: ModelEMA | None = None,
    stop: Callable[[], bool] | None = None,
) -> dict[str, float]:
    """One epoch; ends early when ``stop()`` says the budget is spent (checked after each step)."""
    step.model.train()
    n_steps = len(loader) if not max_steps else min(max_steps, len(loader))
    bar = _progress(loader, n_steps, f"epoch {epoch + 1}/{epochs}", show_progress)
    loss_sum = torch.zeros((), device=step.device)
    seen = 0
    t0 = time.perf_counter()
    for i, (images, targets) in enumerate(bar):
        if max_steps and i >= max_steps:
            break
        if images.shape[0] == 0:  # every image of the batch was undecodable and skipped
            continue
        images, targets = step.to_device(images, targets)
        loss = step(images, targets)
        if ema is not None:
            ema.update(step.model)
        scheduler.step()
        loss_sum += loss.float()
        seen += images.shape[0]
        if (i + 1) % log_interval == 0 or i + 1 == n_steps:
            elapsed = time.perf_counter() - t0
            bar.set_postfix(loss=f"{loss.item():.4f}", img_s=f"{seen / max(elapsed, 1e-9):.1f}")
        if stop is not None and stop():
            break
    bar.close()
    elapsed = time.perf_counter() - t0
    steps = max(1, min(n_steps, i + 1)) if n_steps else 1
    mean_loss = float(loss_sum.item()) / steps
    if not math.isfinite(mean_loss):
        raise FloatingPointError(f"training loss is {mean_loss} in epoch {epoch + 1}; lower train.lr")
    return {"loss": mean_loss, "images_per_s": seen / max(elapsed, 1e-9), "images": seen}


@torch.no_grad()
def predict(
    model: nn.Module, loader, device: torch.device, *, amp: bool = False, channels_last: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits float32 [N, C], targets [N]) over a loader, on the unwrapped model."""
    model.eval()
    dtype = amp_dtype(device, amp)
    fmt = torch.channels_last if channels_last and device.type == "cuda" else torch.contiguous_format
    outs, tgts = [], []
    for images, targets in loader:
        images = images.to(device, non_blocking=True, memory_format=fmt)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()
        with ctx:
            logits = model(images)
        outs.append(logits.float().cpu())
        tgts.append(torch.as_tensor(targets))
    return torch.cat(outs), torch.cat(tgts)


def fit(
    model: nn.Module,
    *,
    cfg: TrainSpec,
    device: torch.device,
    train_loader,
    train_sampler=None,
    loss_fn: LossFn,
    validate: Callable[[nn.Module], dict[str, float]],
    ctx: RunContext,
    save: Callable[[nn.Module, FitState, dict[str, Any], bool], None],
    extra_params: Iterable[nn.Parameter] = (),
    resume: dict[str, Any] | None = None,
    monitor: str = "val_accuracy",
    param_groups: list[dict[str, Any]] | None = None,
    budget: Budget | None = None,
    ema: ModelEMA | None = None,
) -> FitState:
    """Train ``cfg.epochs`` epochs (fewer when ``budget`` runs out first). ``validate(module)
    -> metrics`` runs on rank 0; ``save(module, state, resume_state, is_best)`` is called on rank
    0 after each epoch. With ``ema``, the averaged copy is the module validated and saved (the
    trained weights travel in ``resume_state["train_state_dict"]`` for resume).
    ``param_groups`` replaces ``model.parameters()`` (each group may set its own ``lr``)."""
    fmt = torch.channels_last if cfg.channels_last and device.type == "cuda" else torch.contiguous_format
    # Module.to accepts device and memory_format together; torch's overloads list them apart.
    model.to(device, memory_format=fmt)  # type: ignore[call-overload]
    extra = list(extra_params)
    for p in extra:
        p.data = p.data.to(device)
    train_model: nn.Module = model
    if is_distributed():
        ids = [device.index] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    groups: list[Any] = list(param_groups) if param_groups else list(model.parameters())
    if extra:
        groups = groups + ([{"params": extra}] if param_groups else extra)
    optimizer = make_optimizer(groups, cfg, fused=device.type == "cuda")
    steps = (
        len(train_loader) if not cfg.max_steps_per_epoch else min(cfg.max_steps_per_epoch, len(train_loader))
    )
    if budget is not None:
        scheduler = budget_scheduler(
            optimizer, budget, warmup_steps=steps * cfg.warmup_epochs, kind=cfg.scheduler.value
        )
    else:
        scheduler = make_scheduler(optimizer, cfg, steps, cfg.epochs)
    if ema is not None:
        ema.to(device, fmt)
    step = TrainStep(
        train_model,
        optimizer,
        loss_fn,
        device,
        cfg.amp,
        fmt == torch.channels_last,
        clip_grad_norm=cfg.clip_grad_norm,
    )
    state = FitState()
    if resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if resume.get("scaler") and step.scaler is not None:
            step.scaler.load_state_dict(resume["scaler"])
        state.epoch = int(resume["epoch"])
        state.best_metric = float(resume.get("best_metric", -1.0))
        state.history = list(resume.get("history", []))
        if ema is not None and resume.get("train_state_dict"):
            model.load_state_dict(resume["train_state_dict"])  # the loaded weights were the EMA's
            ema.updates = int(resume.get("ema_updates", 0))
        log.info("resumed after epoch %d (best %s %.4f)", state.epoch, monitor, state.best_metric)
        if state.epoch >= cfg.epochs:
            log.warning(
                "checkpoint already has %d epochs >= train.epochs=%d: nothing to train",
                state.epoch,
                cfg.epochs,
            )
    for epoch in range(state.epoch, cfg.epochs):
        if train_sampler is not None:
            train_sampler.set_epoch(epoch)
        stats = train_one_epoch(
            step,
            train_loader,
            scheduler,
            epoch=epoch,
            epochs=cfg.epochs,
            log_interval=cfg.log_interval,
            max_steps=cfg.max_steps_per_epoch,
            show_progress=ctx.is_main,
            ema=ema,
            stop=(lambda: budget.exhausted(scheduler.last_epoch)) if budget is not None else None,
        )
        if is_distributed():
            t = torch.tensor([stats["loss"], stats["images_per_s"]], device=device)
            torch.distributed.all_reduce(t)
            stats["loss"] = float(t[0]) / ctx.world_size
            stats["images_per_s"] = float(t[1])  # sum over processes
        state.epoch = epoch + 1
        record: dict[str, Any] = {"epoch": state.epoch, "train_loss": round(stats["loss"], 5)}
        record["images_per_s"] = round(stats["images_per_s"], 1)
        record["lr"] = optimizer.param_groups[0]["lr"]
        spent = budget is not None and budget.exhausted(scheduler.last_epoch)
        evaluated = ema.module if ema is not None else model
        if ctx.is_main:
            record.update(validate(evaluated))
            value = float(record.get(monitor, -stats["loss"]))
            is_best = value > state.best_metric
            if is_best:
                state.best_metric = value
            state.history.append(record)
            log.info("epoch %d/%d %s", state.epoch, cfg.epochs, record)
            ctx.status.progress(**record, best=state.best_metric)
            resume_state = {
                "epoch": state.epoch,
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": step.scaler.state_dict() if step.scaler is not None else None,
                "best_metric": state.best_metric,
                "history": state.history,
            }
            if ema is not None:
                resume_state["train_state_dict"] = model.state_dict()
                resume_state["ema_updates"] = ema.updates
            if state.epoch % cfg.checkpoint_interval == 0 or state.epoch == cfg.epochs or is_best or spent:
                save(evaluated, state, resume_state, is_best)
        if is_distributed():
            torch.distributed.barrier()
        if spent:
            log.info("training budget spent after %d epochs (%d steps)", state.epoch, scheduler.last_epoch)
            break
    return state
