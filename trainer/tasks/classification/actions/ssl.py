"""``ssl``: self-supervised (DINO or MIM) pretraining of the backbone (:mod:`trainer.ssl`)."""

from __future__ import annotations

from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.spec import ClassificationSpec


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Self-supervised (ssl.method) pretraining of model.backbone on dataset.unlabeled_root."""
    from trainer.ssl.action import run_ssl

    return run_ssl(spec, ctx, backbone=spec.model.backbone, init_path=spec.model.pretrained_path)
