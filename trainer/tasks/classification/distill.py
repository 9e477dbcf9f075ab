"""Classification distillation: logit KL with temperature (plus cross-entropy on the labels) and
the shared feature bindings (:class:`trainer.distill.FeatureBindings`). The teacher runs in eval
mode under ``no_grad``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.distill import Binding, DistillationMismatchError, FeatureBindings


class Distiller(nn.Module):
    """Wraps teacher + student; ``loss(images, targets)`` is the training objective."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        example: torch.Tensor,
        *,
        bindings: Sequence[Binding] = (),
        temperature: float = 4.0,
        logit_weight: float = 0.7,
        label_smoothing: float = 0.0,
    ):
        super().__init__()
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student = student
        self.temperature = temperature
        self.logit_weight = logit_weight
        self.ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)
        self.features = FeatureBindings(teacher, student, bindings)
        # one dry run to size the projections and check that logits agree
        with torch.no_grad():
            was = student.training
            student.eval()
            t_out = teacher(example)
            s_out = student(example)
            student.train(was)
        if t_out.shape != s_out.shape:
            raise DistillationMismatchError(
                f"teacher logits {tuple(t_out.shape)} and student logits {tuple(s_out.shape)} differ: "
                "teacher and student must be trained on the same classes"
            )
        self.features.build_projections()

    @property
    def projections(self) -> nn.ModuleList:
        return self.features.projections

    def remove_hooks(self) -> None:
        self.features.remove_hooks()

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """Student logits, or the distillation loss when ``targets`` is given (so DDP, which
        only synchronises through ``forward``, sees the loss computation)."""
        if targets is None:
            return self.student(images)
        return self.loss(images, targets)

    def loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.teacher.eval()
            t_logits = self.teacher(images)
        s_logits = self.student(images)
        T = self.temperature
        kd = F.kl_div(
            F.log_softmax(s_logits.float() / T, dim=1),
            F.softmax(t_logits.float() / T, dim=1),
            reduction="batchmean",
        ) * (T * T)
        total = self.logit_weight * kd + (1 - self.logit_weight) * self.ce(s_logits, targets)
        if self.features.bindings:
            total = total + self.features.loss()
        return total
