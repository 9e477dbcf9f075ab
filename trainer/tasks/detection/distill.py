"""Single-stage detection distillation: a frozen teacher guides the student in one training run.

Loss = ``gt_weight`` x the student's own RT-DETR loss
     + feature terms: for each binding, L1/L2 between the student's and the teacher's module
       outputs (forward hooks), through a learned 1x1 projection when channels differ and a
       resize when the spatial sizes differ;
     + prediction terms on *matched queries*: the student's final queries are matched one to one
       with the teacher's (Hungarian, on |p_s - p_t| + |b_s - b_t|), then the student's class
       probabilities follow the teacher's (BCE on sigmoid(logits / T)) and its boxes follow the
       teacher's (L1 + GIoU, weighted by the teacher's confidence so background queries do not
       pull boxes around).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.checkpoint import unwrap
from trainer.tasks.detection.loss import targets_to
from trainer.tasks.detection.spec import DistillSpec

log = logging.getLogger(__name__)


def _tensor_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    raise TypeError(f"cannot distil a module output of type {type(output).__name__}")


def _module(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        import difflib

        names = [n for n, _ in model.named_modules() if n]
        near = difflib.get_close_matches(name, names, n=5)
        raise ValueError(f"module {name!r} not found; closest names: {near}") from None


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
    """Holds the teacher, the hooks and the projections; ``loss`` plugs into ``trainer.engine.fit``."""

    def __init__(self, teacher: nn.Module, student: nn.Module, cfg: DistillSpec, device: torch.device):
        super().__init__()
        self.cfg = cfg
        self.teacher = teacher.to(device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._t_feats: dict[int, torch.Tensor] = {}
        self._s_feats: dict[int, torch.Tensor] = {}
        self._handles = []
        self.projections = nn.ModuleList()
        probe_size = int(student.detector_config.image_size)
        for i, b in enumerate(cfg.bindings):
            tm, sm = _module(teacher, b.teacher_module_name), _module(student, b.student_module_name)
            self._handles.append(tm.register_forward_hook(self._hook(self._t_feats, i)))
            self._handles.append(sm.register_forward_hook(self._hook(self._s_feats, i)))
        with torch.no_grad():  # channel counts of each binding, from one probe image
            x = torch.zeros(1, 3, probe_size, probe_size, device=device)
            self.teacher(pixel_values=x)
            was = student.training
            student.to(device).eval()(pixel_values=x)
            student.train(was)
        for i, _ in enumerate(cfg.bindings):
            cs, ct = self._s_feats[i].shape[1], self._t_feats[i].shape[1]
            self.projections.append(nn.Identity() if cs == ct else nn.Conv2d(cs, ct, 1))
        self.projections.to(device)
        self._t_feats.clear()
        self._s_feats.clear()

    @staticmethod
    def _hook(store: dict[int, torch.Tensor], i: int):
        def hook(_m, _inp, out):
            store[i] = _tensor_of(out)

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()

    def _feature_loss(self) -> torch.Tensor:
        total = (
            torch.zeros((), device=next(iter(self._s_feats.values())).device)
            if self._s_feats
            else torch.zeros(())
        )
        for i, b in enumerate(self.cfg.bindings):
            s, t = self._s_feats[i], self._t_feats[i].detach()
            s = self.projections[i](s.float() if isinstance(self.projections[i], nn.Conv2d) else s).float()
            t = t.float()
            if s.shape[-2:] != t.shape[-2:]:
                s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
            crit = F.l1_loss if b.criterion.value == "L1" else F.mse_loss
            # relative to the teacher's feature energy, so the term is O(1) whatever the layer's scale
            total = total + b.weight * crit(s, t) / (
                t.pow(2).mean() if b.criterion.value == "L2" else t.abs().mean()
            ).clamp(min=1e-6)
        return total

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
            loss = loss + self._feature_loss()
        if self.cfg.logit_weight or self.cfg.box_weight:
            loss = loss + self._prediction_loss(s_logits, s_boxes, t_out.logits, t_out.pred_boxes)
        self._t_feats.clear()
        self._s_feats.clear()
        return loss
