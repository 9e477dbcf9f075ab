"""The detection training run on the shared loop (:func:`trainer.engine.fit`): this module
supplies the data, the resume state, the mAP validation and the recipe (batched loss, budget,
EMA, backbone learning rate, automatic batch size and workers); the loop, AMP, DDP,
checkpoints and status are the trainer's. Both ``train`` and ``distill`` run through
:func:`fit_detector`, with their own loss."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.ema import ModelEMA
from trainer.engine import backbone_param_groups, fit
from trainer.models.checkpoint import unwrap
from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.schedule import Budget
from trainer.tasks.detection.criterion import install
from trainer.tasks.detection.data import CocoSplit, loader, open_split
from trainer.tasks.detection.model import load_detector, save_detector
from trainer.tasks.detection.predict import evaluate_predictions
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def auto_batch_size(spec: DetectionSpec, device: torch.device) -> int:
    """``train.batch_size`` when set; else, on a GPU, the largest power of two (at most 128) whose
    estimated activations fit in half its memory (measured on the H200 at 256 px, bf16: the
    resnet18 student peaked at 14.6 GiB at batch 128, 42 GiB at 256; a resnet50 / d_model 256
    detector is taken as four times that); 16 on a CPU."""
    if spec.train.batch_size:
        return spec.train.batch_size
    if device.type != "cuda":
        return 16
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    scale = (spec.dataset.image_size / 256) ** 2 * (1 if spec.model.d_model <= 128 else 4)
    per_image_gib = 0.17 * scale
    batch = 8
    while batch < 128 and 2 * batch * per_image_gib <= 0.5 * total_gib:
        batch *= 2
    return batch


def param_groups(model: nn.Module, spec: DetectionSpec) -> list[dict[str, Any]] | None:
    """The backbone at ``lr x train.backbone_lr_mult``, the rest at ``lr`` (None when 1)."""
    backbone = unwrap(model).get_submodule("model.backbone")
    return backbone_param_groups(model, backbone.parameters(), spec.train)


def _validator(spec: DetectionSpec, val: CocoSplit, device: torch.device, budget: Budget):
    """mAP on val every ``train.val_interval`` epochs, the last one and when the budget ends;
    one loader for the whole run (its workers and image cache persist between epochs)."""
    counter = {"epoch": 0}
    dl = loader(spec, val, train=False, batch_size=spec.evaluate.batch_size, persistent=True)

    def validate(model: nn.Module) -> dict[str, float]:
        counter["epoch"] += 1
        last = counter["epoch"] == spec.train.epochs or budget.exhausted(budget.steps_done)
        if counter["epoch"] % spec.train.val_interval and not last:
            return {}
        metrics, _ = evaluate_predictions(model, val, dl, device)
        model.train()
        return {"val_map": metrics["map"], "val_map50": metrics["map50"]}

    return validate


def _counting(loss_fn, budget: Budget):
    def counted(model, images, targets):
        budget.steps_done += 1
        return loss_fn(model, images, targets)

    return counted


def fit_detector(
    spec: DetectionSpec,
    ctx: RunContext,
    model: nn.Module,
    loss_fn,
    *,
    lineage: dict[str, Any],
    extra_params=(),
) -> ActionOutput:
    """Train ``model`` on <root>/train with ``loss_fn``, validate on <root>/val, keep the best
    val mAP as ``model.pth`` (``last.pth`` for resume) and return the run's metrics.

    The recipe: the batched RT-DETR loss (:mod:`trainer.tasks.detection.criterion`), the
    schedule's horizon from ``train.time_limit_s`` / ``train.budget_images``, the EMA of the
    weights as the validated and saved model, ``train.backbone_lr_mult``; batch size and loader
    workers from the machine when the spec leaves them unset."""
    seed_all(spec.seed)
    train_split, val_split = open_split(spec, "train"), open_split(spec, "val")
    labels = train_split.labels
    if val_split.labels != labels:
        raise ValueError(f"train and val categories differ: {labels} vs {val_split.labels}")
    device = select_device(spec.train.device, ctx.local_rank)
    distributed = ctx.world_size > 1
    if distributed and spec.train.time_limit_s:
        raise ValueError(
            "train.time_limit_s works on one process only (ranks would stop at different steps); "
            "use train.budget_images"
        )
    batch = auto_batch_size(spec, device)
    dl = loader(spec, train_split, train=True, batch_size=batch, distributed=distributed)
    spec = spec.model_copy(
        update={"train": spec.train.model_copy(update={"batch_size": batch, "num_workers": dl.num_workers})}
    )
    log.info("batch size %d, %d loader workers", batch, dl.num_workers)
    install(unwrap(model))
    steps = len(dl) if not spec.train.max_steps_per_epoch else min(spec.train.max_steps_per_epoch, len(dl))
    budget = Budget(
        steps_per_epoch=steps,
        epochs=spec.train.epochs,
        batch_size=batch * ctx.world_size,
        budget_images=spec.train.budget_images,
        time_limit_s=spec.train.time_limit_s,
    )
    best_path = ctx.out_dir / "model.pth"
    last_path = ctx.out_dir / "last.pth"
    common: dict[str, Any] = {
        "labels": labels,
        "mean": list(spec.dataset.mean),
        "std": list(spec.dataset.std),
        "lineage": lineage,
        "label_to_cat": {str(k): int(v) for k, v in train_split.label_to_cat.items()},
    }

    def save(module: nn.Module, state, resume_state: dict[str, Any], is_best: bool) -> None:
        metrics = state.history[-1] if state.history else {}
        save_detector(module, last_path, metrics=metrics, **common, **resume_state)
        if is_best:
            save_detector(module, best_path, metrics=metrics, **common)

    resume = None
    if spec.train.resume:
        rpath = Path(spec.train.resume) if isinstance(spec.train.resume, str) else last_path
        if rpath.is_file():
            loaded = load_detector(rpath, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
            model.load_state_dict(loaded.model.state_dict())
            keys = ("epoch", "optimizer", "scheduler", "scaler", "best_metric", "history")
            resume = {
                k: loaded.payload[k]
                for k in (*keys, "train_state_dict", "ema_updates")
                if k in loaded.payload
            }
    ema = ModelEMA(model, spec.train.ema_decay, spec.train.ema_warmup_steps) if spec.train.ema_decay else None
    state = fit(
        model,
        cfg=spec.train,
        device=device,
        train_loader=dl,
        train_sampler=dl.sampler if distributed else None,
        loss_fn=_counting(loss_fn, budget),
        validate=_validator(spec, val_split, device, budget),
        ctx=ctx,
        save=save,
        extra_params=extra_params,
        resume=resume,
        monitor="val_map",
        param_groups=param_groups(model, spec),
        budget=budget,
        ema=ema,
    )
    history = state.history
    if not best_path.is_file():
        raise RuntimeError("training ended before any model was kept (no finished epoch)")
    best = max((h.get("val_map", -1.0) for h in history), default=-1.0)
    corrupt = dl.dataset.corrupt
    if corrupt:
        log.warning("%d undecodable training images skipped:\n  %s", len(corrupt), "\n  ".join(corrupt[:20]))
    metrics = {
        "val_map": best,
        "epochs": len(history),
        "history": history,
        "train_images": len(train_split.images),
        "batch_size": batch,
        "num_workers": dl.num_workers,
        "steps": budget.steps_done,
        "ema": bool(ema),
        "corrupt_images_skipped": len(corrupt),
        "stopped_by_budget": budget.exhausted(budget.steps_done) and len(history) < spec.train.epochs,
        "world_size": ctx.world_size,
    }
    return ActionOutput(metrics=metrics, model_path=best_path)
