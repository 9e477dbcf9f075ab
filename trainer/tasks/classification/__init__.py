"""The classification task: image folders in, a pruned/distilled/INT8 ONNX classifier out.

Actions, a module each under :mod:`trainer.tasks.classification.actions`: train, evaluate,
inference, prune, retrain, distill, quantize, export, ssl (self-supervised backbone pretraining,
trainer/ssl/).
"""

from __future__ import annotations

from trainer.datasets.synth_pcb import synthesize
from trainer.tasks.classification import actions
from trainer.tasks.classification.spec import ClassificationSpec, check_paths
from trainer.tasks.registry import register_task

TASK = register_task(
    "classification", schema=ClassificationSpec, actions=actions, check=check_paths, synthesize=synthesize
)

__all__ = ["TASK", "ClassificationSpec"]
