"""``distill``: single-stage teacher -> student distillation (features + matched queries)."""

from __future__ import annotations

from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.detection.data import open_split
from trainer.tasks.detection.distill import DetectionDistiller
from trainer.tasks.detection.model import load_detector, make_model
from trainer.tasks.detection.spec import DetectionSpec
from trainer.tasks.detection.training import fit_detector, seed_all


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Single-stage teacher -> student distillation (features + matched queries)."""
    if ctx.world_size > 1:
        raise ValueError("distill runs on one process (train.num_gpus=1): its projections are outside DDP")
    seed_all(spec.seed)
    labels = open_split(spec, "train").labels
    teacher = load_detector(
        spec.distill.teacher.checkpoint, allow_unsafe_pickle=spec.model.allow_unsafe_pickle
    )  # type: ignore[arg-type]
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
        "backbone": student.detector_config.backbone,
    }
    out = fit_detector(
        spec, ctx, student, distiller.loss, lineage=lineage, extra_params=distiller.projections.parameters()
    )
    out.metrics["teacher_backbone"] = teacher.config.backbone
    return out
