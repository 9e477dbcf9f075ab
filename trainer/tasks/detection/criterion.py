"""RT-DETR's training loss, batched: one cost computation per step on the device, one copy to
the host, assignment with scipy only on the small per-image matrices, every loss term computed
for all decoder layers, the encoder's top-k queries and the denoising groups at once.

It is the same objective as transformers' ``RTDetrLoss`` (Hungarian matching on focal class cost
+ L1 + GIoU; varifocal + L1 + GIoU losses on the last layer, every auxiliary layer, the encoder's
query selection and the denoising queries), which a test checks term by term on random inputs.
transformers' version runs the matcher once per layer, each with its own device-to-host copy and
``linear_sum_assignment`` per image, and builds every loss from Python lists per layer; on the
GPU that host-side work was two thirds of a training step at the student's size.

Plugged in through ``model.loss_function`` (:func:`install`), so the model's own forward, DDP
and the denoising query generation stay transformers'.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def xyxy(b: torch.Tensor) -> torch.Tensor:
    """cxcywh -> xyxy."""
    cx, cy, w, h = b.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IoU and generalised IoU of xyxy boxes that broadcast against each other (``[..., 4]``)."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    union = (area_a + area_b - inter).clamp(min=1e-7)  # degenerate boxes: no 0 / 0
    iou = inter / union
    lt_c = torch.minimum(a[..., :2], b[..., :2])
    rb_c = torch.maximum(a[..., 2:], b[..., 2:])
    hull = (rb_c - lt_c).clamp(min=0).prod(-1).clamp(min=1e-7)
    return iou, iou - (hull - union) / hull


@dataclass(frozen=True)
class LossWeights:
    """The RT-DETR config's matcher costs and loss weights (transformers' defaults)."""

    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    matcher_alpha: float = 0.25
    matcher_gamma: float = 2.0
    vfl: float = 1.0
    bbox: float = 5.0
    giou: float = 2.0
    alpha: float = 0.75
    gamma: float = 2.0

    @classmethod
    def from_config(cls, c: Any) -> LossWeights:
        return cls(
            c.matcher_class_cost,
            c.matcher_bbox_cost,
            c.matcher_giou_cost,
            c.matcher_alpha,
            c.matcher_gamma,
            c.weight_loss_vfl,
            c.weight_loss_bbox,
            c.weight_loss_giou,
            c.focal_loss_alpha,
            c.focal_loss_gamma,
        )


@dataclass
class PaddedTargets:
    labels: torch.Tensor  # [B, T] long (0 where padded)
    boxes: torch.Tensor  # [B, T, 4] cxcywh
    sizes: list[int]  # boxes per image (host side: no sync)

    @classmethod
    def of(cls, targets: list[dict[str, torch.Tensor]], device: torch.device) -> PaddedTargets:
        sizes = [int(t["class_labels"].shape[0]) for t in targets]
        b, t_max = len(targets), max(sizes, default=0)
        labels = torch.zeros(b, t_max, dtype=torch.long, device=device)
        boxes = torch.full((b, t_max, 4), 0.5, device=device)
        if sum(sizes):
            bi = torch.repeat_interleave(torch.arange(b), torch.tensor(sizes)).to(device, non_blocking=True)
            ti = torch.cat([torch.arange(n) for n in sizes]).to(device, non_blocking=True)
            labels[bi, ti] = torch.cat([t["class_labels"] for t in targets]).to(device).long()
            boxes[bi, ti] = torch.cat([t["boxes"] for t in targets]).to(device).float()
        return cls(labels, boxes, sizes)


@torch.no_grad()
def match_cost(logits: torch.Tensor, boxes: torch.Tensor, tgt: PaddedTargets, w: LossWeights) -> torch.Tensor:
    """Matching cost ``[G, B, Q, T]`` for G groups of predictions (``logits [G, B, Q, C]``,
    ``boxes [G, B, Q, 4]``) against the padded targets, in float32, in one pass on the device."""
    g, b, q, _ = logits.shape
    t = tgt.labels.shape[1]
    prob = logits.float().sigmoid()
    prob = prob.gather(-1, tgt.labels[None, :, None, :].expand(g, b, q, t))
    a, gm = w.matcher_alpha, w.matcher_gamma
    pos = a * (1 - prob) ** gm * (-(prob + 1e-8).log())
    neg = (1 - a) * prob**gm * (-(1 - prob + 1e-8).log())
    pb = boxes.float()[:, :, :, None, :]
    tb = tgt.boxes[None, :, None, :, :]
    l1 = (pb - tb).abs().sum(-1)
    _, giou = box_iou_giou(xyxy(pb), xyxy(tb))
    cost = w.cost_bbox * l1 + w.cost_class * (pos - neg) - w.cost_giou * giou
    big = torch.finfo(cost.dtype).max
    return torch.nan_to_num(cost, nan=big, posinf=big, neginf=big)


def assign(cost: torch.Tensor, sizes: list[int]) -> tuple[np.ndarray, ...]:
    """Hungarian assignment of every (group, image) matrix of ``cost [G, B, Q, T]`` (one copy to
    the host); returns flat ``(group, image, query, target)`` index arrays."""
    host = cost.cpu().numpy()
    gi, bi, qi, ti = [], [], [], []
    for g in range(host.shape[0]):
        for b, n in enumerate(sizes):
            if not n:
                continue
            rows, cols = linear_sum_assignment(host[g, b, :, :n])
            gi.append(np.full(len(rows), g))
            bi.append(np.full(len(rows), b))
            qi.append(rows)
            ti.append(cols)
    if not gi:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty, empty
    return tuple(np.concatenate(x).astype(np.int64) for x in (gi, bi, qi, ti))


def hungarian_match(
    logits: torch.Tensor, boxes: torch.Tensor, targets: list[dict[str, torch.Tensor]], w: LossWeights
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """Per group, per image ``(query indices, target indices)``, as transformers' matcher returns
    them for one group (sorted by query)."""
    tgt = PaddedTargets.of(targets, logits.device)
    g_idx, b_idx, q_idx, t_idx = assign(match_cost(logits, boxes, tgt, w), tgt.sizes)
    out = []
    for g in range(logits.shape[0]):
        per = []
        for b in range(logits.shape[1]):
            sel = (g_idx == g) & (b_idx == b)
            per.append((q_idx[sel], t_idx[sel]))
        out.append(per)
    return out


def _terms(
    logits: torch.Tensor,
    boxes: torch.Tensor,
    tgt: PaddedTargets,
    idx: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    num_boxes: float,
    w: LossWeights,
) -> dict[str, torch.Tensor]:
    """Varifocal, L1 and GIoU summed over all groups, each normalised by ``num_boxes`` (what
    transformers computes per group and adds up)."""
    g, b, q, t = idx
    logits = logits.float()
    src = boxes.float()[g, b, q]
    dst = tgt.boxes[b, t]
    iou, giou = box_iou_giou(xyxy(src), xyxy(dst))
    target = torch.zeros_like(logits)
    labels = tgt.labels[b, t]
    target[g, b, q, labels] = 1.0
    score = torch.zeros_like(logits)
    score[g, b, q, labels] = iou.detach()
    pred = logits.detach().sigmoid()
    weight = w.alpha * pred.pow(w.gamma) * (1 - target) + score
    vfl = F.binary_cross_entropy_with_logits(logits, score, weight=weight, reduction="sum")
    return {
        "vfl": w.vfl * vfl / num_boxes,
        "bbox": w.bbox * (src - dst).abs().sum() / num_boxes,
        "giou": w.giou * (1 - giou).sum() / num_boxes,
    }


class BatchedRTDetrLoss:
    """A drop-in for transformers' ``RTDetrForObjectDetectionLoss`` (same arguments, same
    ``(loss, loss_dict, auxiliary_outputs)``), batched as the module docstring says."""

    def __init__(self, config: Any):
        self.w = LossWeights.from_config(config)
        self.aux = bool(config.auxiliary_loss)

    def __call__(
        self,
        logits,
        labels,
        device,
        pred_boxes,
        config,
        outputs_class=None,
        outputs_coord=None,
        enc_topk_logits=None,
        enc_topk_bboxes=None,
        denoising_meta_values=None,
        **kwargs,
    ):
        dn = denoising_meta_values
        n_dn = dn["dn_num_split"][0] if dn is not None else 0
        if self.aux and outputs_class is not None:
            cls = outputs_class[:, :, n_dn:].transpose(0, 1)  # [L, B, Q, C]
            box = outputs_coord[:, :, n_dn:].transpose(0, 1)
            if enc_topk_logits is not None:
                cls = torch.cat([cls, enc_topk_logits[None]], 0)
                box = torch.cat([box, enc_topk_bboxes[None]], 0)
        else:
            cls, box = logits[:, n_dn:][None], pred_boxes[:, n_dn:][None]
        tgt = PaddedTargets.of(labels, cls.device)
        num_boxes = float(max(1, sum(tgt.sizes)))
        host_idx = assign(match_cost(cls, box, tgt, self.w), tgt.sizes)
        idx = tuple(torch.from_numpy(a).to(cls.device, non_blocking=True) for a in host_idx)
        terms = _terms(cls, box, tgt, idx, num_boxes, self.w)  # type: ignore[arg-type]
        loss_dict = {f"loss_{k}": v for k, v in terms.items()}
        if dn is not None and self.aux and outputs_class is not None and sum(tgt.sizes) > 0:
            groups = int(dn["dn_num_group"])
            dn_cls = outputs_class[:, :, :n_dn].transpose(0, 1)
            dn_box = outputs_coord[:, :, :n_dn].transpose(0, 1)
            layers = dn_cls.shape[0]
            q1 = torch.cat(
                [p.to(cls.device) for p, n in zip(dn["dn_positive_idx"], tgt.sizes, strict=True) if n]
            )
            b1 = torch.repeat_interleave(torch.arange(len(tgt.sizes)), torch.tensor(tgt.sizes) * groups)
            t1 = torch.cat([torch.arange(n).repeat(groups) for n in tgt.sizes if n])
            per = q1.shape[0]
            g_dn = torch.arange(layers).repeat_interleave(per).to(cls.device, non_blocking=True)
            dn_idx = (
                g_dn,
                b1.repeat(layers).to(cls.device, non_blocking=True),
                q1.repeat(layers),
                t1.repeat(layers).to(cls.device, non_blocking=True),
            )
            dn_terms = _terms(dn_cls, dn_box, tgt, dn_idx, num_boxes * groups, self.w)
            loss_dict.update({f"loss_{k}_dn": v for k, v in dn_terms.items()})
        loss = sum(loss_dict.values())
        return loss, loss_dict, None


def install(model: torch.nn.Module) -> torch.nn.Module:
    """Make ``model`` (a transformers RT-DETR) train with :class:`BatchedRTDetrLoss`."""
    # a plain attribute transformers calls; torch's stubs type Module attributes as Tensor | Module
    model.loss_function = BatchedRTDetrLoss(model.config)  # type: ignore[assignment]
    return model
