"""Single-stage detection distillation: a frozen teacher guides the student in one training run.

Loss = ``gt_weight`` x the student's own RT-DETR loss
     + feature terms (the shared :class:`trainer.distill.FeatureBindings`): for each binding,
       L1/L2 between the student's and the teacher's module outputs (forward hooks), through a
       learned 1x1 projection when channels differ and a resize when the spatial sizes differ,
       relative to the teacher feature's energy;
     + prediction terms on *matched queries*: the student's final queries are matched one to one
       with the teacher's (Hungarian, on |p_s - p_t| + |b_s - b_t|), then the student's class
       probabilities follow the teacher's (BCE on sigmoid(logits / T)) and its boxes follow the
       teacher's (L1 + GIoU, weighted by the teacher's confidence so background queries do not
       pull boxes around).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from trainer.distill import Binding, FeatureBindings
from trainer.models.checkpoint import unwrap
from trainer.tasks.detection.loss import targets_to
from trainer.tasks.detection.spec import DistillSpec

log = logging.getLogger(__name__)


def box_cxcywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def giou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise generalised IoU of xyxy boxes [..., 4]."""
    lt, rb = torch.max(a[..., :2], b[..., :2]), torch.min(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=1e-7)
    lt_c, rb_c = torch.min(a[..., :2], b[..., :2]), torch.max(a[..., 2:], b[..., 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-7)


class DetectionDistiller(nn.Module):
    """Holds the teacher, the feature bindings and their projections; ``loss`` plugs into
    ``trainer.engine.fit``."""

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: DistillSpec, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        bindings = [
            Binding(b.teacher_module_name, b.student_module_name, b.criterion.value, b.weight)
            for b in cfg.bindings
        ]
        self.features = FeatureBindings(teacher, student, bindings, bias=True, relative=True)
        probe_size = int(student.detector_config.image_size)
        with torch.no_grad():  # channel counts of each binding, from one probe image
            x = torch.zeros(1, 3, probe_size, probe_size, device=device)
            self.teacher(pixel_values=x)
            was = student.training
            student.to(device).eval()(pixel_values=x)
            student.train(was)
        self.features.build_projections()
        self.features.to(device)

    @property
    def projections(self) -> nn.ModuleList:
        return self.features.projections

    def close(self) -> None:
        self.features.remove_hooks()

    def _prediction_loss(self, s_logits, s_boxes, t_logits, t_boxes) -> torch.Tensor:
        from scipy.optimize import linear_sum_assignment

        temp = self.cfg.temperature
        s_prob, t_prob = torch.sigmoid(s_logits.float() / temp), torch.sigmoid(t_logits.float() / temp)
        with torch.no_grad():
            cost = torch.cdist(s_prob, t_prob, p=1) + torch.cdist(s_boxes.float(), t_boxes.float(), p=1)
            cost = cost.cpu().numpy()
        cls_loss = box_loss = torch.zeros((), device=s_logits.device)
        for i in range(s_logits.shape[0]):
            rows, cols = linear_sum_assignment(cost[i])
            r = torch.as_tensor(rows, device=s_logits.device)
            c = torch.as_tensor(cols, device=s_logits.device)
            cls_loss = (
                cls_loss
                + F.binary_cross_entropy_with_logits(s_logits[i, r].float() / temp, t_prob[i, c]) * temp**2
            )
            conf = t_prob[i, c].max(-1).values.detach()
            sb, tb = s_boxes[i, r].float(), t_boxes[i, c].float()
            l1 = (sb - tb).abs().sum(-1)
            g = 1 - giou(box_cxcywh_to_xyxy(sb), box_cxcywh_to_xyxy(tb))
            box_loss = box_loss + ((l1 + g) * conf).sum() / conf.sum().clamp(min=1.0)
        n = s_logits.shape[0]
        return self.cfg.logit_weight * cls_loss / n + self.cfg.box_weight * box_loss / n

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.teacher(pixel_values=images)
        s_out = model(pixel_values=images, labels=targets_to(targets, images.device))
        q = unwrap(model).detector_config.num_queries
        # in training the student's outputs start with the denoising queries: keep the last q
        s_logits, s_boxes = s_out.logits[:, -q:], s_out.pred_boxes[:, -q:]
        loss = self.cfg.gt_weight * s_out.loss
        if self.cfg.bindings:
            loss = loss + self.features.loss()
        if self.cfg.logit_weight or self.cfg.box_weight:
            loss = loss + self._prediction_loss(s_logits, s_boxes, t_out.logits, t_out.pred_boxes)
        self.features.clear()
        return loss
