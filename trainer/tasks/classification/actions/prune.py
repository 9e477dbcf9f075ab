"""``prune``: see :func:`trainer.tasks.classification.compress.prune`."""

from trainer.tasks.classification.compress import prune as run

__all__ = ["run"]
