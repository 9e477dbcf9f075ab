"""The classification task: image folders in, a pruned/distilled/INT8 ONNX classifier out.

Actions (one function each, registered by name): train, evaluate, inference, prune, retrain,
distill, quantize, export, ssl (self-supervised backbone pretraining, trainer/ssl/).
"""

from __future__ import annotations

from trainer.datasets.synth_pcb import synthesize
from trainer.tasks.classification.compress import distill, prune
from trainer.tasks.classification.deploy import export, quantize
from trainer.tasks.classification.evaluate import evaluate, inference
from trainer.tasks.classification.spec import ClassificationSpec, check_paths
from trainer.tasks.classification.train import retrain, train
from trainer.tasks.registry import register_task


def ssl(spec: ClassificationSpec, ctx):
    """Self-supervised (DINO) pretraining of model.backbone on dataset.unlabeled_root."""
    from trainer.ssl.action import run_ssl

    return run_ssl(spec, ctx, backbone=spec.model.backbone, init_path=spec.model.pretrained_path)


TASK = register_task("classification", schema=ClassificationSpec, check=check_paths, synthesize=synthesize)
TASK.action("train", distributed=True)(train)
TASK.action("retrain", distributed=True)(retrain)
TASK.action("distill", distributed=True)(distill)
TASK.action("evaluate")(evaluate)
TASK.action("inference")(inference)
TASK.action("prune")(prune)
TASK.action("export")(export)
TASK.action("quantize")(quantize)
TASK.action("ssl")(ssl)

__all__ = ["TASK", "ClassificationSpec"]
