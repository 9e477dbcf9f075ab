"""Object detection: RT-DETR (transformers) on COCO-format data, as a task of the trainer.

``edgeloop model detection <action> -e trainer/specs/detection.yaml [key=value ...]``; the actions
are registered here and run through the trainer's job machinery (results dir, ``status.json``,
``metrics.json``). ``edgeloop data synth --task detection`` calls :func:`synth.synthesize`.
"""

from __future__ import annotations

from trainer.tasks.detection.spec import DetectionSpec, check_paths
from trainer.tasks.detection.synth import synthesize
from trainer.tasks.registry import register_task

TASK = register_task("detection", schema=DetectionSpec, check=check_paths, synthesize=synthesize)


@TASK.action("train", distributed=True)
def train(spec, ctx):
    """Train an RT-DETR detector (best val mAP kept)."""
    from trainer.tasks.detection.train import train_action

    return train_action(spec, ctx)


@TASK.action("evaluate")
def evaluate(spec, ctx):
    """COCO mAP@[.5:.95], mAP@.5, per-class AP of a .pth or .onnx model."""
    from trainer.tasks.detection.train import evaluate_action

    return evaluate_action(spec, ctx)


@TASK.action("inference")
def inference(spec, ctx):
    """COCO-results JSON and annotated images for a folder of images."""
    from trainer.tasks.detection.train import inference_action

    return inference_action(spec, ctx)


@TASK.action("distill")
def distill(spec, ctx):
    """Single-stage teacher -> student distillation (features + matched queries)."""
    from trainer.tasks.detection.train import distill_action

    return distill_action(spec, ctx)


@TASK.action("export")
def export(spec, ctx):
    """ONNX (opset 17, symbolic batch, NMS-free outputs) + manifest, parity-checked."""
    from trainer.tasks.detection.export import export_action

    return export_action(spec, ctx)


@TASK.action("quantize")
def quantize(spec, ctx):
    """INT8 Q/DQ ONNX with real calibration images; mAP drop reported."""
    from trainer.tasks.detection.export import quantize_action

    return quantize_action(spec, ctx)


@TASK.action("ssl")
def ssl(spec, ctx):
    """Self-supervised (DINO) pretraining of the backbone on dataset.unlabeled_root."""
    from trainer.ssl.action import run_ssl

    return run_ssl(spec, ctx, backbone=spec.model.backbone, init_path=spec.model.pretrained_backbone_path)
