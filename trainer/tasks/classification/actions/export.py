"""``export``: see :func:`trainer.tasks.classification.deploy.export`."""

from trainer.tasks.classification.deploy import export as run

__all__ = ["run"]
