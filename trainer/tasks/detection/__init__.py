"""Object detection: RT-DETR (transformers) on COCO-format data, as a task of the trainer.

``edgeloop model detection <action> -e trainer/specs/detection.yaml [key=value ...]``; each action
is a module of :mod:`trainer.tasks.detection.actions`, run through the trainer's job machinery
(results dir, ``status.json``, ``metrics.json``). ``edgeloop data synth --task detection`` calls
:func:`synth.synthesize`.

Modules, one job each (imports go down this list, never up):
``spec`` (schema, path checks), ``data`` (COCO splits, transforms, loaders, calibration images),
``backbones`` (backbones by name, pretrained backbone weights), ``model`` (RT-DETR factory, our
checkpoint format), ``metrics`` (decoding, COCO mAP), ``export`` (the ONNX graph's contract,
parity, INT8 recipe), ``predict`` (PyTorch / ONNX Runtime runners, drawing), ``loss`` and
``distill`` (training losses), ``training`` (the run on :func:`trainer.engine.fit`), ``actions/``
(``ssl`` is the shared DINO pretraining of :mod:`trainer.ssl`).
"""

from __future__ import annotations

from trainer.tasks.detection import actions
from trainer.tasks.detection.spec import DetectionSpec, check_paths
from trainer.tasks.detection.synth import synthesize
from trainer.tasks.registry import register_task

TASK = register_task(
    "detection", schema=DetectionSpec, actions=actions, check=check_paths, synthesize=synthesize
)
