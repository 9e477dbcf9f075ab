"""COCO mAP three ways on the same detections: faster-coco-eval (the trainer's), pycocotools
(the reference), and the agent's numpy re-implementation (no torch on the agent)."""

from __future__ import annotations

import numpy as np
import pytest

from agent.eval_detection import coco_map as agent_map
from trainer.tasks.detection.metrics import coco_map


def _case(seed: int):
    rng = np.random.default_rng(seed)
    cats = [2, 5, 9]  # non-contiguous
    images, anns, results = [], [], []
    for image_id in range(1, 16):
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 100, "height": 80})
        for _ in range(int(rng.integers(0, 4))):
            x, y = rng.uniform(0, 70), rng.uniform(0, 50)
            w, h = rng.uniform(4, 30), rng.uniform(4, 30)
            cat = int(rng.choice(cats))
            crowd = int(rng.random() < 0.1)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": cat,
                    "bbox": [x, y, w, h],
                    "area": w * h,
                    "iscrowd": crowd,
                }
            )
            if rng.random() < 0.8:  # a detection near it, sometimes with the wrong class
                j = rng.normal(0, 2.5, 4)
                dc = cat if rng.random() < 0.85 else int(rng.choice(cats))
                results.append(
                    {
                        "image_id": image_id,
                        "category_id": dc,
                        "bbox": [x + j[0], y + j[1], max(1, w + j[2]), max(1, h + j[3])],
                        "score": float(rng.uniform(0.3, 1)),
                    }
                )
        for _ in range(int(rng.integers(0, 3))):  # false positives
            results.append(
                {
                    "image_id": image_id,
                    "category_id": int(rng.choice(cats)),
                    "bbox": [float(rng.uniform(0, 80)), float(rng.uniform(0, 60)), 10.0, 10.0],
                    "score": float(rng.uniform(0, 0.6)),
                }
            )
    gt = {"images": images, "annotations": anns, "categories": [{"id": c, "name": f"c{c}"} for c in cats]}
    return gt, results, cats


def _numpy_inputs(gt, results):
    gts, dets = {}, {}
    for a in gt["annotations"]:
        x, y, w, h = a["bbox"]
        gts.setdefault(a["image_id"], []).append(
            (np.array([x, y, x + w, y + h]), a["category_id"], bool(a["iscrowd"]))
        )
    for r in results:
        x, y, w, h = r["bbox"]
        dets.setdefault(r["image_id"], []).append(
            (np.array([x, y, x + w, y + h]), r["category_id"], r["score"])
        )
    return gts, dets


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_three_implementations_agree(seed: int) -> None:
    gt, results, cats = _case(seed)
    fast = coco_map(gt, results)
    ref = coco_map(gt, results, backend="pycocotools")
    gts, dets = _numpy_inputs(gt, results)
    ours = agent_map(gts, dets, cats)
    assert 0.05 < ref["map"] < 0.95
    for key in ("map", "map50", "map75"):
        assert fast[key] == pytest.approx(ref[key], abs=1e-4), key
        assert ours[key] == pytest.approx(ref[key], abs=1e-4), key
    for c in cats:
        assert ours["per_category"][c] == pytest.approx(ref["ap_per_class"][f"c{c}"], abs=1e-4)


def test_no_detections_is_zero() -> None:
    gt, _, cats = _case(0)
    assert coco_map(gt, [])["map"] == 0.0
    gts, _ = _numpy_inputs(gt, [])
    assert agent_map(gts, {}, cats)["map"] == 0.0
