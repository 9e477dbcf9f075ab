"""``ssl``: self-supervised (DINO or MIM) pretraining of the detector's backbone (:mod:`trainer.ssl`)."""

from __future__ import annotations

from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.spec import DetectionSpec


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Self-supervised (DINO) pretraining of the backbone on dataset.unlabeled_root."""
    from trainer.ssl.action import run_ssl

    return run_ssl(spec, ctx, backbone=spec.model.backbone, init_path=spec.model.pretrained_backbone_path)
