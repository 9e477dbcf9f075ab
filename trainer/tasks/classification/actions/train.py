"""``train``: see :func:`trainer.tasks.classification.train.train`."""

from trainer.tasks.classification.train import train as run

__all__ = ["run"]

DISTRIBUTED = True
