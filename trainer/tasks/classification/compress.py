"""prune and distill: make a smaller classifier from a trained one."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from trainer.datasets.folder import class_names
from trainer.distill import Binding, DistillationMismatchError, Distiller
from trainer.models.backbones import head_module
from trainer.models.checkpoint import load_checkpoint, save_checkpoint
from trainer.prune import prune_model
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import (
    check_checkpoint_classes,
    new_model,
    resolve,
    seed_everything,
)
from trainer.tasks.classification.spec import ClassificationSpec
from trainer.tasks.classification.train import run_training

log = logging.getLogger(__name__)


def prune(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Structured channel pruning (Torch-Pruning dependency graph); the head is kept."""
    path = resolve(spec.prune.checkpoint, ctx.default_checkpoint("train"))
    ck = load_checkpoint(path)
    model = ck.model.eval()
    example = torch.randn(1, 3, ck.image_size, ck.image_size)
    p = spec.prune
    stats = prune_model(
        model,
        example,
        ignored=[head_module(model, ck.backbone)],
        mode=p.mode.value,
        ratio=p.ratio,
        threshold=p.threshold,
        max_ratio=p.max_ratio,
        round_to=p.round_to,
        importance=p.importance,
        global_pruning=p.global_pruning,
    )
    with torch.no_grad():
        out = model(example)
    if out.shape[1] != len(ck.labels):
        raise RuntimeError(f"pruning changed the number of outputs to {out.shape[1]}")
    lineage = dict(ck.lineage)
    ratio = p.ratio if p.mode.value == "ratio" else 1 - stats["params_ratio"]
    lineage.update(
        action="prune",
        prune_ratio=ratio,
        parent_version=str(path),
        history=[
            *lineage.get("history", []),
            f"prune:{p.mode.value}={p.ratio if p.mode.value == 'ratio' else p.threshold}",
        ],
    )
    ck.model, ck.structured, ck.lineage = model, True, lineage
    save_checkpoint(ck, ctx.out_dir / "model.pth")
    log.info(
        "params %.2fM -> %.2fM, MACs %.3fG -> %.3fG",
        stats["params_before"] / 1e6,
        stats["params_after"] / 1e6,
        stats["macs_before"] / 1e9,
        stats["macs_after"] / 1e9,
    )
    metrics = {
        **stats,
        "mode": p.mode.value,
        "ratio": p.ratio,
        "round_to": p.round_to,
        "backbone": ck.backbone,
    }
    if p.mode.value == "threshold":
        metrics["threshold"] = p.threshold
    return ActionOutput(metrics=metrics, model_path=ctx.out_dir / "model.pth")


def distill(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Train a student (model.backbone, or distill.student_checkpoint) from a teacher checkpoint."""
    seed_everything(spec.seed)
    d = spec.distill
    teacher_path = Path(d.teacher.checkpoint or "")
    teacher = load_checkpoint(teacher_path)
    if d.teacher.backbone and d.teacher.backbone != teacher.backbone:
        raise DistillationMismatchError(
            f"distill.teacher.backbone={d.teacher.backbone!r} but {teacher_path} holds a {teacher.backbone!r} model"
        )
    classes = class_names(Path(spec.dataset.root), "train")
    check_checkpoint_classes(teacher, spec, f"teacher {teacher_path}")
    if d.student_checkpoint:
        base = load_checkpoint(d.student_checkpoint)
        if base.labels != teacher.labels:
            raise DistillationMismatchError(
                f"student {d.student_checkpoint} classes {base.labels} differ from teacher classes {teacher.labels}"
            )
        student, backbone, lineage = base.model, base.backbone, dict(base.lineage)
    else:
        base = None
        student = new_model(spec, len(classes))
        backbone, lineage = spec.model.backbone, {"history": [f"train:{spec.model.backbone}"]}
    example = torch.randn(2, 3, spec.dataset.image_size, spec.dataset.image_size)
    bindings = [
        Binding(b.teacher_module_name, b.student_module_name, b.criterion.value, b.weight) for b in d.bindings
    ]
    distiller = Distiller(
        teacher.model,
        student,
        example,
        bindings=bindings,
        temperature=d.temperature,
        logit_weight=d.logit_weight,
        label_smoothing=spec.train.label_smoothing,
    )
    lineage.update(
        action="distill",
        teacher=f"{teacher.backbone}:{teacher_path}",
        parent_version=str(d.student_checkpoint or ""),
        history=[*lineage.get("history", []), f"distill:{teacher.backbone}->{backbone}"],
    )
    # projections (if any) train with the student; the teacher is frozen inside the distiller
    out = run_training(
        spec,
        ctx,
        model=student,
        classes=classes,
        base=base,
        lineage=lineage,
        loss_fn=lambda m, x, y: m(x, y),
        fit_model=distiller,
        unwrap_for_save=lambda m: m.student,
    )
    distiller.remove_hooks()
    out.metrics.update(
        teacher=teacher.backbone,
        student=backbone,
        temperature=d.temperature,
        bindings=len(bindings),
        projections=sum(not isinstance(p, torch.nn.Identity) for p in distiller.projections),
    )
    return out
