"""Feature distillation, shared by every task: TAO-style bindings between teacher and student modules.

A binding names a teacher module and a student module (``teacher_module_name`` /
``student_module_name``, dotted names as in ``model.named_modules()``), a criterion (L1, L2, or KL
over channels) and a weight. Forward hooks capture both outputs; when channel counts differ a
trainable projection (1x1 conv for feature maps, linear for vectors) maps the student's features
to the teacher's width, and feature maps are resized to the teacher's spatial size. The
projections train with the student and are dropped afterwards: the saved student is the plain
model. Each task adds its own prediction terms (classification: logit KL,
``trainer.tasks.classification.distill``; detection: matched queries,
``trainer.tasks.detection.distill``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.backbones import get_submodule


class DistillationMismatchError(ValueError):
    """Teacher and student cannot be distilled as configured (classes, feature ranks, shapes)."""


@dataclass
class Binding:
    teacher_module_name: str
    student_module_name: str
    criterion: str = "L2"  # L1 | L2 | KL
    weight: float = 1.0


def tensor_of(output: Any) -> torch.Tensor:
    """The feature tensor of a module's output (a tensor, the first of a tuple, or a
    transformers output's ``last_hidden_state``)."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise DistillationMismatchError(f"cannot distil a module output of type {type(output).__name__}")


class _Capture:
    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _m, _inp, out) -> None:
        self.value = tensor_of(out)


def projection(s_shape: torch.Size, t_shape: torch.Size, *, bias: bool = False) -> nn.Module:
    """Identity when the channel counts agree, else a trainable map student -> teacher width."""
    if len(s_shape) != len(t_shape):
        raise DistillationMismatchError(
            f"binding feature ranks differ: student {tuple(s_shape)} vs teacher {tuple(t_shape)}"
        )
    if s_shape[1] == t_shape[1]:
        return nn.Identity()
    if len(s_shape) == 4:
        return nn.Conv2d(s_shape[1], t_shape[1], kernel_size=1, bias=bias)
    if len(s_shape) == 2:
        return nn.Linear(s_shape[1], t_shape[1], bias=bias)
    raise DistillationMismatchError(f"cannot project features of shape {tuple(s_shape)}")


class FeatureBindings(nn.Module):
    """The hooks and projections of a list of bindings; ``loss()`` after a teacher and a student
    forward pass gives the weighted feature terms.

    Call :meth:`build_projections` once after a probe forward of both models (it sizes the
    projections from the captured shapes). ``relative=True`` divides each term by the teacher
    feature's energy (mean |t| for L1, mean t^2 for L2), so a term is O(1) whatever the layer's
    scale (used by detection, whose encoder features are large)."""

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        bindings: Sequence[Binding],
        *,
        bias: bool = False,
        relative: bool = False,
    ):
        super().__init__()
        self.bindings = list(bindings)
        self.bias, self.relative = bias, relative
        self._t = [_Capture(get_submodule(teacher, b.teacher_module_name)) for b in self.bindings]
        self._s = [_Capture(get_submodule(student, b.student_module_name)) for b in self.bindings]
        self.projections = nn.ModuleList()

    def build_projections(self) -> None:
        for s, t in zip(self._s, self._t, strict=True):
            if s.value is None or t.value is None:
                raise DistillationMismatchError("a bound module did not run in the probe forward pass")
            self.projections.append(projection(s.value.shape, t.value.shape, bias=self.bias))
        self.clear()

    def clear(self) -> None:
        for cap in [*self._t, *self._s]:
            cap.value = None

    def remove_hooks(self) -> None:
        for cap in [*self._t, *self._s]:
            cap.handle.remove()

    def loss(self) -> torch.Tensor:
        total: torch.Tensor | None = None
        for b, proj, s_cap, t_cap in zip(self.bindings, self.projections, self._s, self._t, strict=True):
            if s_cap.value is None or t_cap.value is None:
                raise DistillationMismatchError(
                    f"binding {b.student_module_name!r} did not run in this forward pass"
                )
            s = proj(s_cap.value.float() if not isinstance(proj, nn.Identity) else s_cap.value).float()
            t = t_cap.value.detach().float()
            if s.dim() == 4 and s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            if b.criterion == "L1":
                f = F.l1_loss(s, t)
                if self.relative:
                    f = f / t.abs().mean().clamp(min=1e-6)
            elif b.criterion == "KL":
                f = F.kl_div(
                    F.log_softmax(s.flatten(2) if s.dim() == 4 else s, dim=1),
                    F.softmax(t.flatten(2) if t.dim() == 4 else t, dim=1),
                    reduction="batchmean",
                )
            else:
                f = F.mse_loss(s, t)
                if self.relative:
                    f = f / t.pow(2).mean().clamp(min=1e-6)
            total = b.weight * f if total is None else total + b.weight * f
        self.clear()
        if total is None:
            return torch.zeros(())
        return total
