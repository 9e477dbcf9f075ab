"""``train``: fit a classifier from model.backbone on dataset.root (``model.pth``, ``last.pth``,
``history.json``)."""

from __future__ import annotations

from pathlib import Path

from trainer.datasets.folder import class_names
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import new_model, seed_everything
from trainer.tasks.classification.spec import ClassificationSpec
from trainer.tasks.classification.training import run_training

DISTRIBUTED = True


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Train a classifier from model.backbone (optionally model.pretrained_path)."""
    seed_everything(spec.seed)
    classes = class_names(Path(spec.dataset.root), "train")
    model = new_model(spec, len(classes))
    lineage = {"action": "train", "history": [f"train:{spec.model.backbone}"], "parent_version": ""}
    return run_training(spec, ctx, model=model, classes=classes, base=None, lineage=lineage)
