"""``evaluate``: see :func:`trainer.tasks.classification.evaluate.evaluate`."""

from trainer.tasks.classification.evaluate import evaluate as run

__all__ = ["run"]
