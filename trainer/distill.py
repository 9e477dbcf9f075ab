"""Knowledge distillation: logit KL with temperature plus TAO-style feature bindings.

A binding names a teacher module and a student module (``teacher_module_name`` /
``student_module_name``, dotted names as in ``model.named_modules()``), a criterion (L1, L2 or
KL over channels) and a weight. Forward hooks capture both outputs; when channel counts differ
a trainable 1x1 projection (conv for feature maps, linear for vectors) maps the student's
features to the teacher's width, and feature maps are resized to the teacher's spatial size.
The projections train with the student and are dropped afterwards: the saved student is the
plain model. The teacher runs in eval mode under ``no_grad``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.backbones import get_submodule


class DistillationMismatchError(ValueError):
    pass


@dataclass
class Binding:
    teacher_module_name: str
    student_module_name: str
    criterion: str = "L2"
    weight: float = 1.0


class _Capture:
    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out) -> None:
        self.value = out[0] if isinstance(out, (tuple, list)) else out


def _project(s_shape: torch.Size, t_shape: torch.Size) -> nn.Module:
    if len(s_shape) != len(t_shape):
        raise DistillationMismatchError(
            f"binding feature ranks differ: student {tuple(s_shape)} vs teacher {tuple(t_shape)}"
        )
    if s_shape[1] == t_shape[1]:
        return nn.Identity()
    if len(s_shape) == 4:
        return nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=False)
    if len(s_shape) == 2:
        return nn.Linear(s_shape[1], t_shape[1], bias=False)
    raise DistillationMismatchError(f"cannot project features of shape {tuple(s_shape)}")


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
        self.bindings = list(bindings)
        self._t_caps = [_Capture(get_submodule(teacher, b.teacher_module_name)) for b in self.bindings]
        self._s_caps = [_Capture(get_submodule(student, b.student_module_name)) for b in self.bindings]
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
        self.projections = nn.ModuleList(
            _project(s.value.shape, t.value.shape) for s, t in zip(self._s_caps, self._t_caps, strict=True)
        )

    def remove_hooks(self) -> None:
        for cap in [*self._t_caps, *self._s_caps]:
            cap.handle.remove()

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
        for b, proj, s_cap, t_cap in zip(
            self.bindings, self.projections, self._s_caps, self._t_caps, strict=True
        ):
            s = proj(s_cap.value)
            t = t_cap.value.detach()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            s, t = s.float(), t.float()
            if b.criterion == "L1":
                f = F.l1_loss(s, t)
            elif b.criterion == "KL":
                f = F.kl_div(
                    F.log_softmax(s.flatten(2) if s.dim() == 4 else s, dim=1),
                    F.softmax(t.flatten(2) if t.dim() == 4 else t, dim=1),
                    reduction="batchmean",
                )
            else:
                f = F.mse_loss(s, t)
            total = total + b.weight * f
        return total
