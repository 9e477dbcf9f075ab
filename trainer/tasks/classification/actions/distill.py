"""``distill``: train a student from a teacher checkpoint (logit KL + feature bindings)."""

from __future__ import annotations

from pathlib import Path

import torch

from trainer.datasets.folder import class_names
from trainer.distill import Binding, DistillationMismatchError
from trainer.models.checkpoint import load_checkpoint
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import check_checkpoint_classes, new_model, seed_everything
from trainer.tasks.classification.distill import Distiller
from trainer.tasks.classification.spec import ClassificationSpec
from trainer.tasks.classification.training import run_training

DISTRIBUTED = True


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Train a student (model.backbone, or distill.student_checkpoint) from a teacher checkpoint."""
    seed_everything(spec.seed)
    d = spec.distill
    teacher_path = Path(d.teacher.checkpoint or "")
    teacher = load_checkpoint(teacher_path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    if d.teacher.backbone and d.teacher.backbone != teacher.backbone:
        raise DistillationMismatchError(
            f"distill.teacher.backbone={d.teacher.backbone!r} but {teacher_path} holds a {teacher.backbone!r} model"
        )
    classes = class_names(Path(spec.dataset.root), "train")
    check_checkpoint_classes(teacher, spec, f"teacher {teacher_path}")
    if d.student_checkpoint:
        base = load_checkpoint(d.student_checkpoint, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
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
