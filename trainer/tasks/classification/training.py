"""One classification training run on the shared loop (:func:`trainer.engine.fit`), used by
train, retrain and distill: a fresh, transfer-learned or pruned model fitted on dataset.root.

Writes ``model.pth`` (the best epoch by validation accuracy), ``last.pth`` (latest epoch with
optimizer/scheduler state, what ``train.resume`` reads) and ``history.json``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.engine import FitState, backbone_param_groups, cross_entropy, fit, predict
from trainer.models.backbones import head_module
from trainer.models.checkpoint import Checkpoint, count_params, load_checkpoint, save_checkpoint
from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.classification.common import (
    TrainData,
    checkpoint_from,
    classification_metrics,
    train_data,
    write_json,
)
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def make_validate(data: TrainData, device: torch.device, spec: ClassificationSpec):
    crit = nn.CrossEntropyLoss()

    def validate(model: nn.Module) -> dict[str, float]:
        logits, targets = predict(
            model, data.val, device, amp=spec.train.amp, channels_last=spec.train.channels_last
        )
        m = classification_metrics(logits.argmax(1).numpy(), targets.numpy(), data.classes)
        return {"val_accuracy": round(m["accuracy"], 5), "val_loss": round(float(crit(logits, targets)), 5)}

    return validate


def resume_source(spec: ClassificationSpec, ctx: RunContext) -> Path | None:
    r = spec.train.resume
    if r is False or r == "false":
        return None
    path = ctx.out_dir / "last.pth" if r is True or r == "true" else Path(r)
    if not path.is_file():
        raise FileNotFoundError(f"train.resume: no checkpoint to resume from at {path}")
    return path


def run_training(
    spec: ClassificationSpec,
    ctx: RunContext,
    *,
    model: nn.Module,
    classes: list[str],
    base: Checkpoint | None,
    lineage: dict[str, Any],
    loss_fn=None,
    fit_model: nn.Module | None = None,
    extra_params=(),
    unwrap_for_save=lambda m: m,
) -> ActionOutput:
    """Shared by train, retrain and distill."""
    device = select_device(spec.train.device, ctx.local_rank)
    data = train_data(spec, ctx, classes)
    structured = bool(base and base.structured)
    backbone = base.backbone if base else spec.model.backbone
    resume_from = resume_source(spec, ctx)
    resume_state = None
    if resume_from is not None:
        prev = load_checkpoint(resume_from, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
        if prev.labels != classes:
            raise ValueError(f"resume checkpoint {resume_from} has classes {prev.labels}, data has {classes}")
        model.load_state_dict(prev.model.state_dict())
        resume_state = prev.extra
        if "optimizer" not in resume_state:
            raise ValueError(f"{resume_from} has no optimizer state (resume from a last.pth)")
        log.info("resuming from %s (epoch %s)", resume_from, resume_state.get("epoch"))

    def save(m: nn.Module, state: FitState, resume_st: dict[str, Any], is_best: bool) -> None:
        student = unwrap_for_save(m)
        ck = checkpoint_from(
            spec,
            student,
            classes,
            backbone=backbone,
            structured=structured,
            lineage=lineage,
            metrics={"val_accuracy": state.history[-1].get("val_accuracy")},
        )
        save_checkpoint(ck, ctx.out_dir / "last.pth", **resume_st)
        if is_best:
            save_checkpoint(ck, ctx.out_dir / "model.pth")

    target = fit_model if fit_model is not None else model
    groups = None
    if fit_model is None:  # train / retrain: the network minus its classifier is the backbone
        head = set(map(id, head_module(model, backbone).parameters()))
        groups = backbone_param_groups(
            model, [p for p in model.parameters() if id(p) not in head], spec.train
        )
    state = fit(
        target,
        cfg=spec.train,
        device=device,
        train_loader=data.train,
        train_sampler=data.sampler,
        loss_fn=loss_fn or cross_entropy(spec.train.label_smoothing),
        validate=make_validate(data, device, spec),
        ctx=ctx,
        save=save,
        extra_params=extra_params,
        resume=resume_state,
        param_groups=groups,
    )
    metrics: dict[str, Any] = {
        "epochs": state.epoch,
        "corrupt_images": data.corrupt,
        "world_size": ctx.world_size,
    }
    if state.history:
        last = state.history[-1]
        metrics.update(
            val_accuracy=last.get("val_accuracy"),
            best_val_accuracy=state.best_metric,
            train_loss=last.get("train_loss"),
            images_per_s=last.get("images_per_s"),
        )
    metrics["params"] = count_params(model)
    if ctx.is_main:
        write_json(ctx.out_dir / "history.json", state.history)
        if not (ctx.out_dir / "model.pth").exists():  # resumed a finished run elsewhere: keep a usable model
            ck = checkpoint_from(
                spec,
                unwrap_for_save(target),
                classes,
                backbone=backbone,
                structured=structured,
                lineage=lineage,
            )
            save_checkpoint(ck, ctx.out_dir / "model.pth")
    return ActionOutput(metrics=metrics, model_path=ctx.out_dir / "model.pth")
