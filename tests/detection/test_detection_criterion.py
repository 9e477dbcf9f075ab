"""The batched RT-DETR loss is transformers' objective: same matching, same loss terms, same
gradients, on a tiny real detector's outputs (denoising queries included)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from transformers.loss.loss_rt_detr import RTDetrForObjectDetectionLoss, RTDetrHungarianMatcher

from trainer.tasks.detection.criterion import BatchedRTDetrLoss, LossWeights, hungarian_match, install
from trainer.tasks.detection.model import DetectorConfig, build_detector

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _targets(sizes, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "class_labels": torch.randint(0, classes, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g) * 0.4 + 0.1,
        }
        for n in sizes
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batched_matcher_equals_transformers_per_image(seed):
    torch.manual_seed(seed)
    groups, batch, queries, classes = 3, 5, 30, 4
    logits = torch.randn(groups, batch, queries, classes) * 2
    boxes = torch.rand(groups, batch, queries, 4) * 0.5 + 0.2
    targets = _targets([3, 0, 1, 7, 2], classes, seed)

    class Cfg:
        matcher_class_cost, matcher_bbox_cost, matcher_giou_cost = 2.0, 5.0, 2.0
        use_focal_loss, matcher_alpha, matcher_gamma = True, 0.25, 2.0

    ref = RTDetrHungarianMatcher(Cfg())
    ours = hungarian_match(logits, boxes, targets, LossWeights())
    for g in range(groups):
        expected = ref({"logits": logits[g], "pred_boxes": boxes[g]}, targets)
        for b in range(batch):
            (q_ref, t_ref), (q, t) = expected[b], ours[g][b]
            order = np.argsort(q)
            assert q_ref.tolist() == q[order].tolist()
            assert t_ref.tolist() == t[order].tolist()


def test_batched_loss_equals_transformers_loss_and_gradients():
    torch.manual_seed(0)
    cfg = DetectorConfig(
        num_labels=3,
        num_queries=20,
        d_model=32,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        decoder_layers=2,
        num_denoising=10,
        image_size=64,
    )
    model = build_detector(cfg).train()
    captured = {}

    def record(*args, **kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        return RTDetrForObjectDetectionLoss(*args, **kwargs)

    model.loss_function = record
    model(pixel_values=torch.randn(4, 3, 64, 64), labels=_targets([2, 0, 3, 1]))
    assert captured["kwargs"]["denoising_meta_values"] is not None  # denoising terms are covered
    ref, _, _ = RTDetrForObjectDetectionLoss(*captured["args"], **captured["kwargs"])
    ours, parts, _ = BatchedRTDetrLoss(model.config)(*captured["args"], **captured["kwargs"])
    assert set(parts) == {f"loss_{k}{s}" for k in ("vfl", "bbox", "giou") for s in ("", "_dn")}
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    g_ref = torch.autograd.grad(ref, params, retain_graph=True, allow_unused=True)
    g_ours = torch.autograd.grad(ours, params, allow_unused=True)
    for a, b in zip(g_ref, g_ours, strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            assert (a - b).norm() <= 1e-4 * a.norm() + 1e-6  # float summation order differs


def test_installed_loss_trains_and_handles_images_without_boxes():
    torch.manual_seed(0)
    model = install(
        build_detector(DetectorConfig(num_queries=10, d_model=32, decoder_layers=1, image_size=64))
    )
    model.train()
    out = model(pixel_values=torch.randn(2, 3, 64, 64), labels=_targets([0, 0]))
    assert torch.isfinite(out.loss)
    out.loss.backward()


def _per_image_distill_loss(s_logits, s_boxes, t_logits, t_boxes, temp, logit_w, box_w):
    """The distiller's former loop, one image at a time (the reference the batched loss replaces)."""
    from scipy.optimize import linear_sum_assignment
    from torch.nn import functional as F
    from torchvision.ops import generalized_box_iou

    from trainer.tasks.detection.criterion import xyxy

    s_prob, t_prob = torch.sigmoid(s_logits / temp), torch.sigmoid(t_logits / temp)
    cls_loss = box_loss = torch.zeros(())
    matches = []
    for i in range(s_logits.shape[0]):
        cost = torch.cdist(s_prob[i], t_prob[i], p=1) + torch.cdist(s_boxes[i], t_boxes[i], p=1)
        r, c = (torch.as_tensor(a) for a in linear_sum_assignment(cost.detach().numpy()))
        matches.append((r.tolist(), c.tolist()))
        cls_loss = (
            cls_loss + F.binary_cross_entropy_with_logits(s_logits[i, r] / temp, t_prob[i, c]) * temp**2
        )
        conf = t_prob[i, c].max(-1).values.detach()
        sb, tb = s_boxes[i, r], t_boxes[i, c]
        g = generalized_box_iou(xyxy(sb), xyxy(tb)).diagonal()
        box_loss = box_loss + (((sb - tb).abs().sum(-1) + 1 - g) * conf).sum() / conf.sum().clamp(min=1.0)
    n = s_logits.shape[0]
    return logit_w * cls_loss / n + box_w * box_loss / n, matches


@pytest.mark.parametrize("seed", [0, 1])
def test_batched_distill_matching_equals_per_image(seed):
    """The distiller's batched query matching picks the per-image Hungarian assignment, and its
    loss (value and gradients) is the per-image loop's."""
    from types import SimpleNamespace

    from trainer.tasks.detection.distill import DetectionDistiller, match_queries

    torch.manual_seed(seed)
    batch, q_s, q_t, classes = 6, 12, 30, 4
    s_logits = (torch.randn(batch, q_s, classes) * 2).requires_grad_()
    s_boxes = (torch.rand(batch, q_s, 4) * 0.5 + 0.2).requires_grad_()
    t_logits = torch.randn(batch, q_t, classes) * 2
    t_boxes = torch.rand(batch, q_t, 4) * 0.5 + 0.2
    temp, logit_w, box_w = 2.0, 1.0, 2.0
    ref, matches = _per_image_distill_loss(s_logits, s_boxes, t_logits, t_boxes, temp, logit_w, box_w)
    b, r, c = match_queries(torch.sigmoid(s_logits / temp), s_boxes, torch.sigmoid(t_logits / temp), t_boxes)
    for i, (rows, cols) in enumerate(matches):
        sel = b == i
        assert r[sel].tolist() == rows and c[sel].tolist() == cols
    holder = SimpleNamespace(cfg=SimpleNamespace(temperature=temp, logit_weight=logit_w, box_weight=box_w))
    ours = DetectionDistiller._prediction_loss(holder, s_logits, s_boxes, t_logits, t_boxes)
    assert torch.allclose(ours, ref, rtol=1e-5, atol=1e-6)
    g_ref = torch.autograd.grad(ref, [s_logits, s_boxes], retain_graph=True)
    g_ours = torch.autograd.grad(ours, [s_logits, s_boxes])
    for a, e in zip(g_ours, g_ref, strict=True):
        assert torch.allclose(a, e, rtol=1e-4, atol=1e-6)
