"""Self-supervised pretraining of a backbone on unlabelled images (the ``ssl`` action).

Without downloadable pretrained weights (an air-gapped line, a new domain), pretraining on the
factory's own unlabelled images is how a backbone gets a useful start before fine-tuning with
few labels. Two methods: DINO from the maintained ``lightly`` library (its loss, projection
head, multi-crop transform and schedules), and masked image modelling for CNNs (our own,
:mod:`trainer.ssl.mim`: lightly's MIM is ViT-only), which is the one that pays on the PCB
defects; this package wires them to our backbones, spec, status and checkpoint format:

- :mod:`trainer.ssl.spec`: the typed ``ssl:`` spec section and the path check;
- :mod:`trainer.ssl.data`: a recursive folder of images, corrupt files skipped and counted;
- :mod:`trainer.ssl.dino`: the student/teacher pair around a headless backbone;
- :mod:`trainer.ssl.mim`: masked-image reconstruction through the backbone's stages;
- :mod:`trainer.ssl.action`: the action (loop, progress, ``backbone.pth`` + ``backbone.json``).

The output ``backbone.pth`` is a flat state dict of plain tensors (``torch.load(...,
weights_only=True)`` reads it) named like the classification model's parameters without its
head, so ``model.pretrained_path`` (classification) and ``model.pretrained_backbone_path``
(detection) load it as it is.
"""
