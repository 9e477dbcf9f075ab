"""``inference``: see :func:`trainer.tasks.classification.evaluate.inference`."""

from trainer.tasks.classification.evaluate import inference as run

__all__ = ["run"]
