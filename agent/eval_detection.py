"""mAP of a detection engine itself on a COCO split (``DIR/annotations.json`` + the images).

Registered as the agent's evaluator for ``manifest.task == "detection"`` (see
``agent.evaluate``), so ``edgeloop agent bench MODEL.onnx --manifest M.json --eval DIR`` reports the
mAP of this device's own engine at its precision. numpy only (no torch, no pycocotools): the
metric is COCO's bbox evaluation re-implemented for area "all" and 100 detections per image
(IoU thresholds .50:.05:.95, 101-point interpolated precision, crowd regions ignored), and the
trainer's tests check it against faster-coco-eval on the same detections.

Decoding follows the manifest's ``detection`` field: which outputs hold boxes and logits, box
format (``cxcywh`` | ``xyxy`` | ``xywh``), normalised or in input pixels, score activation
(``sigmoid``: top-k over every (query, class) pair, no NMS; ``softmax``: the last class is
"no object", one label per query). Boxes are mapped back through the manifest's resize
(``stretch`` or ``letterbox``) to the original image. Model labels are matched to the split's
categories by name.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.backends.base import Engine, fixed_batch
from agent.calibration import batch_size_for
from agent.errors import AgentError
from agent.evaluate import register_evaluator
from agent.preprocess import Preprocessor, feeds_for
from protos import artifact_pb2

log = logging.getLogger(__name__)

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


# ------------------------------------------------------------------ decoding
def _to_xyxy(boxes: np.ndarray, fmt: str) -> np.ndarray:
    b = boxes.astype(np.float64)
    if fmt in ("", "cxcywh"):
        return np.stack(
            [
                b[..., 0] - b[..., 2] / 2,
                b[..., 1] - b[..., 3] / 2,
                b[..., 0] + b[..., 2] / 2,
                b[..., 1] + b[..., 3] / 2,
            ],
            -1,
        )
    if fmt == "xywh":
        return np.stack([b[..., 0], b[..., 1], b[..., 0] + b[..., 2], b[..., 1] + b[..., 3]], -1)
    if fmt == "xyxy":
        return b
    raise AgentError(f"unknown box_format {fmt!r} in the manifest (cxcywh | xyxy | xywh)")


def decode_detections(
    logits: np.ndarray, boxes: np.ndarray, det: artifact_pb2.DetectionOutput, max_detections: int = 100
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per image (scores [k], labels [k], xyxy boxes [k, 4] in the input's frame: 0..1 when the
    manifest says ``normalized``, else input pixels)."""
    out = []
    xyxy_all = _to_xyxy(boxes, det.box_format)
    for i in range(logits.shape[0]):
        lg = logits[i].astype(np.float64)
        if det.score_activation in ("", "sigmoid"):
            probs = 1.0 / (1.0 + np.exp(-lg))
            flat = probs.reshape(-1)
            k = min(max_detections, flat.size)
            top = np.argpartition(-flat, k - 1)[:k]
            top = top[np.argsort(-flat[top], kind="stable")]
            q, labels, scores = top // probs.shape[1], top % probs.shape[1], flat[top]
        elif det.score_activation == "softmax":
            e = np.exp(lg - lg.max(-1, keepdims=True))
            probs = (e / e.sum(-1, keepdims=True))[:, :-1]  # last class: no object
            labels, scores = probs.argmax(-1), probs.max(-1)
            q = np.argsort(-scores, kind="stable")[:max_detections]
            labels, scores = labels[q], scores[q]
        else:
            raise AgentError(f"unknown score_activation {det.score_activation!r} (sigmoid | softmax)")
        out.append((scores, labels.astype(np.int64), xyxy_all[i, q]))
    return out


def to_image_frame(
    xyxy: np.ndarray, pre: Preprocessor, normalized: bool, width: int, height: int
) -> np.ndarray:
    """Boxes in the network input (0..1 or pixels) -> pixels of the original image."""
    b = xyxy.copy()
    if normalized:
        b *= [pre.width, pre.height, pre.width, pre.height]
    if pre.resize_mode == "letterbox":
        r = min(pre.width / width, pre.height / height)
        nw, nh = max(1, round(width * r)), max(1, round(height * r))
        px, py = (pre.width - nw) // 2, (pre.height - nh) // 2
        b = (b - [px, py, px, py]) / r
    elif pre.resize_mode == "center_crop":
        r = max(pre.width / width, pre.height / height)
        nw, nh = max(pre.width, round(width * r)), max(pre.height, round(height * r))
        left, top = (nw - pre.width) // 2, (nh - pre.height) // 2
        b = (b + [left, top, left, top]) / r
    else:  # stretch
        b = b * [width / pre.width, height / pre.height, width / pre.width, height / pre.height]
    return np.clip(b, 0, [width, height, width, height])


# ------------------------------------------------------------------ COCO metric
def _iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """[D, G] IoU of xyxy boxes; for a crowd ground truth, intersection over the detection's area."""
    if dt.size == 0 or gt.size == 0:
        return np.zeros((len(dt), len(gt)))
    lt = np.maximum(dt[:, None, :2], gt[None, :, :2])
    rb = np.minimum(dt[:, None, 2:], gt[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    a_dt = np.clip(dt[:, 2:] - dt[:, :2], 0, None).prod(-1)
    a_gt = np.clip(gt[:, 2:] - gt[:, :2], 0, None).prod(-1)
    union = a_dt[:, None] + a_gt[None, :] - inter
    union = np.where(crowd[None, :], a_dt[:, None], union)
    return inter / np.maximum(union, 1e-12)


def coco_map(
    gts: dict[int, list[tuple[np.ndarray, int, bool]]],
    dets: dict[int, list[tuple[np.ndarray, int, float]]],
    categories: list[int],
    max_detections: int = 100,
) -> dict[str, Any]:
    """COCO bbox AP (area all). ``gts``: image -> [(xyxy, category, iscrowd)];
    ``dets``: image -> [(xyxy, category, score)]. Returns map, map50, map75 and AP per category
    (-1 where the category has no ground truth)."""
    t = len(IOU_THRESHOLDS)
    ap = -np.ones((t, len(categories)))
    for k, cat in enumerate(categories):
        scores_all, matched_all, ignored_all = [], [], []
        n_gt = 0
        for image_id in set(gts) | set(dets):
            g = [x for x in gts.get(image_id, []) if x[1] == cat]
            d = sorted((x for x in dets.get(image_id, []) if x[1] == cat), key=lambda x: -x[2])[
                :max_detections
            ]
            crowd = np.array([x[2] for x in g], dtype=bool)
            order = np.argsort(crowd, kind="stable")  # crowd regions last
            g = [g[j] for j in order]
            crowd = crowd[order]
            n_gt += int((~crowd).sum())
            if not d:
                continue
            gb = np.array([x[0] for x in g]).reshape(-1, 4)
            db = np.array([x[0] for x in d]).reshape(-1, 4)
            ious = _iou(db, gb, crowd)
            matched = np.zeros((t, len(d)), dtype=bool)
            ignored = np.zeros((t, len(d)), dtype=bool)
            for ti, thr in enumerate(IOU_THRESHOLDS):
                taken = np.zeros(len(g), dtype=bool)
                for di in range(len(d)):
                    best, best_iou = -1, min(thr, 1 - 1e-10)
                    for gi in range(len(g)):
                        if taken[gi] and not crowd[gi]:
                            continue
                        if best > -1 and not crowd[best] and crowd[gi]:
                            break  # a real match beats any crowd region
                        if ious[di, gi] < best_iou:
                            continue
                        best, best_iou = gi, ious[di, gi]
                    if best > -1:
                        taken[best] = True
                        matched[ti, di] = True
                        ignored[ti, di] = crowd[best]
            scores_all.append(np.array([x[2] for x in d]))
            matched_all.append(matched)
            ignored_all.append(ignored)
        if n_gt == 0:
            continue
        if not scores_all:
            ap[:, k] = 0.0
            continue
        scores = np.concatenate(scores_all)
        order = np.argsort(-scores, kind="mergesort")
        matched = np.concatenate(matched_all, 1)[:, order]
        ignored = np.concatenate(ignored_all, 1)[:, order]
        tps = np.cumsum(matched & ~ignored, 1).astype(np.float64)
        fps = np.cumsum(~matched & ~ignored, 1).astype(np.float64)
        for ti in range(t):
            tp, fp = tps[ti], fps[ti]
            recall = tp / n_gt
            precision = tp / np.maximum(tp + fp, np.spacing(1))
            precision = np.maximum.accumulate(precision[::-1])[::-1]  # monotone envelope
            idx = np.searchsorted(recall, RECALL_POINTS, side="left")
            sampled = np.array([precision[j] if j < len(precision) else 0.0 for j in idx])
            ap[ti, k] = sampled.mean()
    valid = ap[0] > -1
    if not valid.any():
        return {"map": 0.0, "map50": 0.0, "map75": 0.0, "per_category": dict.fromkeys(categories, -1.0)}
    return {
        "map": float(ap[:, valid].mean()),
        "map50": float(ap[0, valid].mean()),
        "map75": float(ap[5, valid].mean()),
        "per_category": {c: float(ap[:, k].mean()) if valid[k] else -1.0 for k, c in enumerate(categories)},
    }


# ------------------------------------------------------------------ the evaluator
def load_coco_split(data_dir: Path) -> dict[str, Any]:
    ann = data_dir / "annotations.json"
    if not ann.is_file():
        raise AgentError(f"{data_dir} is not a COCO split: no annotations.json")
    try:
        return json.loads(ann.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise AgentError(f"{ann} is not valid JSON: {exc}") from None


@register_evaluator("detection")
def evaluate_detection(
    engine: Engine,
    manifest: artifact_pb2.Manifest,
    data_dir: Path,
    batch_size: int,
    limit: int | None,
    progress: Callable[[int, int], None] | None,
    max_detections: int = 100,
) -> dict[str, float]:
    coco = load_coco_split(Path(data_dir))
    det = manifest.detection
    names = [o.name for o in engine.outputs]
    boxes_name = det.boxes_output or ("boxes" if "boxes" in names else "")
    logits_name = det.logits_output or ("logits" if "logits" in names else "")
    if boxes_name not in names or logits_name not in names:
        raise AgentError(
            f"the manifest's detection outputs (boxes={boxes_name!r}, logits={logits_name!r}) are not "
            f"outputs of the engine {names}"
        )
    categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
    by_name = {c["name"]: int(c["id"]) for c in categories}
    labels = list(manifest.labels) or [c["name"] for c in categories]
    unknown = [n for n in labels if n not in by_name]
    if unknown:
        raise AgentError(f"model labels {unknown} are not categories of {data_dir}: {sorted(by_name)}")
    label_to_cat = [by_name[n] for n in labels]
    images = sorted(coco["images"], key=lambda im: int(im["id"]))
    if limit:
        step = len(images) / limit
        images = [images[int(i * step)] for i in range(min(limit, len(images)))]
    wanted = {int(im["id"]) for im in images}
    gts: dict[int, list[tuple[np.ndarray, int, bool]]] = {i: [] for i in wanted}
    for a in coco["annotations"]:
        if int(a["image_id"]) in wanted:
            x, y, w, h = (float(v) for v in a["bbox"])
            if w > 0 and h > 0:
                gts[int(a["image_id"])].append(
                    (np.array([x, y, x + w, y + h]), int(a["category_id"]), bool(a.get("iscrowd", 0)))
                )
    pre = Preprocessor.from_manifest(manifest)
    batch = batch_size_for(manifest, batch_size)
    dets: dict[int, list[tuple[np.ndarray, int, float]]] = {}
    done = 0
    for start in range(0, len(images), batch):
        chunk = images[start : start + batch]
        arrays, sizes = [], []
        for im in chunk:
            path = Path(data_dir) / im["file_name"]
            try:
                with Image.open(path) as pil:
                    arrays.append(pre(pil))
                    sizes.append(pil.size)
            except (OSError, ValueError) as exc:
                raise AgentError(f"cannot read evaluation image {path}: {exc}") from None
        pixels = np.stack(arrays)
        n = len(chunk)
        if n < batch and fixed_batch(manifest.inputs[0].shape):  # static batch: pad the last one
            pixels = np.concatenate([pixels, np.repeat(pixels[-1:], batch - n, axis=0)])
        out = engine.run(feeds_for(manifest, pixels))
        decoded = decode_detections(out[logits_name][:n], out[boxes_name][:n], det, max_detections)
        for im, (w, h), (scores, labs, xyxy) in zip(chunk, sizes, decoded, strict=True):
            boxes = to_image_frame(xyxy, pre, det.normalized, w, h)
            dets[int(im["id"])] = [
                (boxes[j], label_to_cat[int(labs[j])], float(scores[j])) for j in range(len(scores))
            ]
        done += n
        if progress:
            progress(done, len(images))
    result = coco_map(gts, dets, [int(c["id"]) for c in categories], max_detections)
    metrics = {
        "map": result["map"],
        "map50": result["map50"],
        "map75": result["map75"],
        "samples": float(len(images)),
    }
    cat_names = {int(c["id"]): c["name"] for c in categories}
    for cat, value in result["per_category"].items():
        if value >= 0:
            metrics[f"ap/{cat_names[cat]}"] = value
    return metrics
