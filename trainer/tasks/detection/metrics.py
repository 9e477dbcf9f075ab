"""Decoding RT-DETR outputs and COCO metrics (faster-coco-eval).

Decoding is NMS-free, as the exported ONNX model's consumers do it: sigmoid over the class
logits, the top ``max_detections`` (query, class) pairs of the whole image, boxes cxcywh in 0..1
of the network input scaled to the original image size. :func:`decode` works on numpy so the
PyTorch and ONNX paths score detections identically.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

import numpy as np

log = logging.getLogger(__name__)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def decode(
    logits: np.ndarray,
    boxes: np.ndarray,
    orig_sizes: np.ndarray,
    *,
    max_detections: int = 100,
    conf_threshold: float = 0.0,
) -> list[dict[str, np.ndarray]]:
    """Per image: ``scores`` [k], ``labels`` [k] (contiguous), ``boxes`` [k, 4] xyxy in pixels."""
    out = []
    probs = sigmoid(logits.astype(np.float32))
    b, q, c = probs.shape
    k = min(max_detections, q * c)
    for i in range(b):
        flat = probs[i].reshape(-1)
        top = np.argpartition(-flat, k - 1)[:k]
        top = top[np.argsort(-flat[top])]
        scores = flat[top]
        keep = scores >= conf_threshold
        top, scores = top[keep], scores[keep]
        qi, labels = top // c, top % c
        cx, cy, w, h = boxes[i, qi].astype(np.float32).T
        hh, ww = float(orig_sizes[i][0]), float(orig_sizes[i][1])
        xyxy = np.stack([(cx - w / 2) * ww, (cy - h / 2) * hh, (cx + w / 2) * ww, (cy + h / 2) * hh], 1)
        xyxy = np.clip(xyxy, 0, [ww, hh, ww, hh])
        out.append({"scores": scores, "labels": labels.astype(np.int64), "boxes": xyxy.reshape(-1, 4)})
    return out


def to_coco_results(
    detections: list[dict[str, np.ndarray]], image_ids: list[int], label_to_cat: dict[int, int]
) -> list[dict[str, Any]]:
    res = []
    for det, image_id in zip(detections, image_ids, strict=True):
        for s, lab, (x0, y0, x1, y1) in zip(det["scores"], det["labels"], det["boxes"], strict=True):
            res.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(label_to_cat[int(lab)]),
                    "bbox": [
                        round(float(x0), 2),
                        round(float(y0), 2),
                        round(float(x1 - x0), 2),
                        round(float(y1 - y0), 2),
                    ],
                    "score": round(float(s), 5),
                }
            )
    return res


def coco_map(
    gt: dict[str, Any], results: list[dict[str, Any]], *, backend: str = "faster_coco_eval"
) -> dict[str, Any]:
    """COCO bbox metrics: ``map`` (@[.5:.95]), ``map50``, ``map75``, ``ap_per_class`` by name."""
    if backend == "pycocotools":
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval as Eval
    else:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as Eval
    gt = dict(gt)
    gt.setdefault("info", {})
    gt.setdefault("licenses", [])
    gt_api = COCO()
    gt_api.dataset = gt
    gt_api.createIndex()
    names = {int(c["id"]): c["name"] for c in gt["categories"]}
    if not results:
        return {
            "map": 0.0,
            "map50": 0.0,
            "map75": 0.0,
            "ap_per_class": dict.fromkeys(names.values(), 0.0),
            "detections": 0,
        }
    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes(results)
        ev = Eval(gt_api, dt_api, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = [float(s) for s in ev.stats]
    precision = np.asarray(ev.eval["precision"])  # [T, R, K, A, M]
    per_class = {}
    for k, cat_id in enumerate(ev.params.catIds):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[names[int(cat_id)]] = round(float(p.mean()), 5) if p.size else float("nan")
    return {
        "map": round(max(stats[0], 0.0), 5),
        "map50": round(max(stats[1], 0.0), 5),
        "map75": round(max(stats[2], 0.0), 5),
        "ap_per_class": per_class,
        "detections": len(results),
    }
