"""``quantize``: see :func:`trainer.tasks.classification.deploy.quantize`."""

from trainer.tasks.classification.deploy import quantize as run

__all__ = ["run"]
