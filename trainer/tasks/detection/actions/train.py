"""``train``: an RT-DETR detector on <dataset.root>/train, the best val mAP kept as ``model.pth``."""

from __future__ import annotations

from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.detection.data import open_split
from trainer.tasks.detection.loss import detection_loss
from trainer.tasks.detection.model import make_model
from trainer.tasks.detection.spec import DetectionSpec
from trainer.tasks.detection.training import fit_detector, seed_all

DISTRIBUTED = True


def run(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Train an RT-DETR detector (best val mAP kept)."""
    seed_all(spec.seed)
    labels = open_split(spec, "train").labels
    model = make_model(spec, labels)
    lineage = {"history": ["train"], "backbone": spec.model.backbone}
    return fit_detector(spec, ctx, model, detection_loss, lineage=lineage)
