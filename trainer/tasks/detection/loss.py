"""The detector's training loss: transformers' RT-DETR loss (Hungarian matching, varifocal
classification, L1 + GIoU boxes, denoising groups), computed by the model itself when it is
given ``labels``. The distillation loss builds on it (:mod:`trainer.tasks.detection.distill`)."""

from __future__ import annotations

import torch
from torch import nn


def targets_to(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """The part of each target dict the RT-DETR loss reads, on ``device``."""
    return [{"class_labels": t["class_labels"].to(device), "boxes": t["boxes"].to(device)} for t in targets]


def detection_loss(
    model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
) -> torch.Tensor:
    """``loss_fn`` for :func:`trainer.engine.fit`: the model's own RT-DETR loss on one batch."""
    out = model(pixel_values=images, labels=targets_to(targets, images.device))
    return out.loss
