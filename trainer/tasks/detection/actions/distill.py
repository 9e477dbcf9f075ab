"""``distill``: single-stage teacher -> student distillation (features + matched queries)."""

from __future__ import annotations

from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.spec import SpecError
from trainer.tasks.detection.data import open_split
from trainer.tasks.detection.distill import DetectionDistiller
from trainer.tasks.detection.model import attached_config, load_detector, make_model
from trainer.tasks.detection.spec import DetectionSpec
from trainer.tasks.detection.training import fit_detector, seed_all


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Single-stage teacher -> student distillation (features + matched queries)."""
    if ctx.world_size > 1:
        raise ValueError("distill runs on one process (train.num_gpus=1): its projections are outside DDP")
    seed_all(spec.seed)
    labels = open_split(spec, "train").labels
    teacher_path = spec.distill.teacher.checkpoint
    if not teacher_path:  # check_paths refuses such a spec before any action runs
        raise SpecError("key 'distill.teacher.checkpoint': required for distill (a detection model.pth)")
    teacher = load_detector(teacher_path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    if spec.distill.teacher.backbone and spec.distill.teacher.backbone != teacher.config.backbone:
        raise ValueError(
            f"distill.teacher.backbone={spec.distill.teacher.backbone!r} but the checkpoint is a "
            f"{teacher.config.backbone!r} detector"
        )
    if teacher.labels != labels:
        raise ValueError(f"teacher labels {teacher.labels} differ from the data set's {labels}")
    if spec.distill.student_checkpoint:
        student = load_detector(
            spec.distill.student_checkpoint, allow_unsafe_pickle=spec.model.allow_unsafe_pickle
        ).model
    else:
        student = make_model(spec, labels)
    device = select_device(spec.train.device, ctx.local_rank)
    distiller = DetectionDistiller(teacher.model, student, spec.distill, device)
    lineage = {
        "history": ["distill"],
        "teacher": f"{teacher.config.backbone}:{spec.distill.teacher.checkpoint}",
        "backbone": attached_config(student).backbone,
    }
    out = fit_detector(
        spec, ctx, student, distiller.loss, lineage=lineage, extra_params=distiller.projections.parameters()
    )
    out.metrics["teacher_backbone"] = teacher.config.backbone
    return out
