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
       pull boxes around). The matching and these terms are batched over the images
       (:func:`match_queries`), as the training criterion's are.
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import nn

from trainer.distill import Binding, FeatureBindings
from trainer.tasks.detection.criterion import assign, box_iou_giou, xyxy
from trainer.tasks.detection.loss import targets_to
from trainer.tasks.detection.model import attached_config
from trainer.tasks.detection.spec import DistillSpec

log = logging.getLogger(__name__)


@torch.no_grad()
def match_queries(
    s_prob: torch.Tensor, s_boxes: torch.Tensor, t_prob: torch.Tensor, t_boxes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One-to-one match of every image's student queries with its teacher queries (Hungarian on
    |p_s - p_t|_1 + |b_s - b_t|_1): the cost of the whole batch in one pass on the device, one
    copy to the host, and the training criterion's :func:`~trainer.tasks.detection.criterion.assign`
    on each image's small matrix. Returns flat ``(image, student query, teacher query)`` indices
    on the device, image by image, each image's rows sorted."""
    cost = torch.cdist(s_prob.float(), t_prob.float(), p=1) + torch.cdist(
        s_boxes.float(), t_boxes.float(), p=1
    )
    b, _, qt = cost.shape
    _, bi, qi, ti = assign(cost[None], [qt] * b)
    dev = s_prob.device
    return tuple(torch.from_numpy(a).to(dev, non_blocking=True) for a in (bi, qi, ti))  # type: ignore[return-value]


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
        probe_size = int(attached_config(student).image_size)
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
        """Class BCE and confidence-weighted L1 + GIoU on the matched queries, batched: the same
        value as a per-image loop (each image's terms normalised on its own, then averaged over
        images), in a fixed number of device ops whatever the batch size."""
        temp = self.cfg.temperature
        n = s_logits.shape[0]
        s_prob, t_prob = torch.sigmoid(s_logits.float() / temp), torch.sigmoid(t_logits.float() / temp)
        b, r, c = match_queries(s_prob, s_boxes, t_prob, t_boxes)
        tp = t_prob[b, c]
        # every image has min(Q_s, Q_t) matched rows, so the mean over all rows is the mean of
        # the per-image means
        cls_loss = F.binary_cross_entropy_with_logits(s_logits[b, r].float() / temp, tp) * temp**2
        conf = tp.max(-1).values.detach()
        sb, tb = s_boxes[b, r].float(), t_boxes[b, c].float()
        _, g = box_iou_giou(xyxy(sb), xyxy(tb))
        per_row = ((sb - tb).abs().sum(-1) + 1 - g) * conf
        num = torch.zeros(n, device=per_row.device).index_add_(0, b, per_row)
        den = torch.zeros(n, device=conf.device).index_add_(0, b, conf).clamp(min=1.0)
        box_loss = (num / den).sum() / n
        return self.cfg.logit_weight * cls_loss + self.cfg.box_weight * box_loss

    def loss(
        self, model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> torch.Tensor:
        with torch.no_grad():
            t_out = self.teacher(pixel_values=images)
        s_out = model(pixel_values=images, labels=targets_to(targets, images.device))
        q = attached_config(model).num_queries
        # in training the student's outputs start with the denoising queries: keep the last q
        s_logits, s_boxes = s_out.logits[:, -q:], s_out.pred_boxes[:, -q:]
        loss = self.cfg.gt_weight * s_out.loss
        if self.cfg.bindings:
            loss = loss + self.features.loss()
        if self.cfg.logit_weight or self.cfg.box_weight:
            loss = loss + self._prediction_loss(s_logits, s_boxes, t_out.logits, t_out.pred_boxes)
        self.features.clear()
        return loss
