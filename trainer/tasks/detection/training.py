"""The detection training run on the shared loop (:func:`trainer.engine.fit`): this module
supplies the data, the resume state, the mAP validation and the time limit; the loop, AMP, DDP,
checkpoints and status are the trainer's. Both ``train`` and ``distill`` run through
:func:`fit_detector`, with their own loss."""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.engine import fit
from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.detection.data import CocoSplit, loader, open_split
from trainer.tasks.detection.model import load_detector, save_detector
from trainer.tasks.detection.predict import evaluate_model
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def _validator(spec: DetectionSpec, val: CocoSplit, device: torch.device):
    counter = {"epoch": 0}

    def validate(model: nn.Module) -> dict[str, float]:
        counter["epoch"] += 1
        if counter["epoch"] % spec.train.val_interval and counter["epoch"] != spec.train.epochs:
            return {}
        metrics, _ = evaluate_model(model, spec, val, device, batch_size=spec.evaluate.batch_size)
        model.train()
        return {"val_map": metrics["map"], "val_map50": metrics["map50"]}

    return validate


class TimeLimitReached(Exception):
    """train.time_limit_s ran out (raised inside the loss, caught by :func:`fit_detector`)."""


def _time_limited(loss_fn, limit_s: float):
    if not limit_s:
        return loss_fn
    deadline = time.monotonic() + limit_s

    def wrapped(model, images, targets):
        if time.monotonic() > deadline:
            raise TimeLimitReached
        return loss_fn(model, images, targets)

    return wrapped


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
    val mAP as ``model.pth`` (``last.pth`` for resume) and return the run's metrics."""
    seed_all(spec.seed)
    train_split, val_split = open_split(spec, "train"), open_split(spec, "val")
    labels = train_split.labels
    if val_split.labels != labels:
        raise ValueError(f"train and val categories differ: {labels} vs {val_split.labels}")
    device = select_device(spec.train.device, ctx.local_rank)
    distributed = ctx.world_size > 1
    if distributed and spec.train.time_limit_s:
        raise ValueError("train.time_limit_s works on one process only (ranks would stop at different steps)")
    dl = loader(spec, train_split, train=True, batch_size=spec.train.batch_size, distributed=distributed)
    best_path = ctx.out_dir / "model.pth"
    last_path = ctx.out_dir / "last.pth"
    common = {
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
            loaded = load_detector(rpath)
            model.load_state_dict(loaded.model.state_dict())
            resume = {
                k: loaded.payload[k]
                for k in ("epoch", "optimizer", "scheduler", "scaler", "best_metric", "history")
                if k in loaded.payload
            }
    loss_fn = _time_limited(loss_fn, spec.train.time_limit_s)
    try:
        state = fit(
            model,
            cfg=spec.train,
            device=device,
            train_loader=dl,
            train_sampler=dl.sampler if distributed else None,
            loss_fn=loss_fn,
            validate=_validator(spec, val_split, device),
            ctx=ctx,
            save=save,
            extra_params=extra_params,
            resume=resume,
            monitor="val_map",
        )
        history, stopped = state.history, False
    except TimeLimitReached:
        if not best_path.is_file():
            raise RuntimeError(
                f"train.time_limit_s={spec.train.time_limit_s} ran out before the first epoch ended"
            ) from None
        history, stopped = load_detector(last_path).payload.get("history", []), True
        log.warning("train.time_limit_s reached after %d epochs; keeping the best of those", len(history))
    best = max((h.get("val_map", -1.0) for h in history), default=-1.0)
    metrics = {
        "val_map": best,
        "epochs": len(history),
        "history": history,
        "train_images": len(train_split.images),
    }
    metrics["stopped_by_time_limit"] = stopped
    metrics["world_size"] = ctx.world_size
    return ActionOutput(metrics=metrics, model_path=best_path)
