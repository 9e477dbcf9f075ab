"""``retrain``: see :func:`trainer.tasks.classification.train.retrain`."""

from trainer.tasks.classification.train import retrain as run

__all__ = ["run"]

DISTRIBUTED = True
