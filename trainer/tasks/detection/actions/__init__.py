"""The detection task's actions, one module each: ``run(spec, ctx)``, plus ``DISTRIBUTED = True``
when the action honours ``train.num_gpus > 1`` (see :mod:`trainer.tasks.registry`)."""
