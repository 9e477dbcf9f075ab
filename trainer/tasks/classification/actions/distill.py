"""``distill``: see :func:`trainer.tasks.classification.compress.distill`."""

from trainer.tasks.classification.compress import distill as run

__all__ = ["run"]

DISTRIBUTED = True
