"""``retrain``: fine-tune a pruned model on dataset.root."""

from __future__ import annotations

from trainer.models.checkpoint import load_checkpoint
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import check_checkpoint_classes, resolve, seed_everything
from trainer.tasks.classification.spec import ClassificationSpec
from trainer.tasks.classification.training import run_training

DISTRIBUTED = True


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Fine-tune a pruned model (retrain.checkpoint, default <results_dir>/prune/model.pth)."""
    seed_everything(spec.seed)
    path = resolve(spec.retrain.checkpoint, ctx.default_checkpoint("prune"))
    base = load_checkpoint(path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    check_checkpoint_classes(base, spec, f"retrain.checkpoint {path}")
    lineage = dict(base.lineage)
    lineage["action"] = "retrain"
    lineage["history"] = [*lineage.get("history", []), "retrain"]
    lineage["parent_version"] = str(path)
    return run_training(spec, ctx, model=base.model, classes=base.labels, base=base, lineage=lineage)
