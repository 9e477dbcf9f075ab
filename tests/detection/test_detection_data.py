"""Detection data: the synthetic PCB set, real COCO quirks, box-preserving augmentation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.tasks.detection.data import CocoDetection, DataError, load_coco_split, train_transforms
from trainer.tasks.detection.spec import DetectionAugmentation
from trainer.tasks.detection.synth import CLASSES, synthesize


def test_synth_is_deterministic_coco(tmp_path: Path) -> None:
    a = synthesize(tmp_path / "a", 12, 64, seed=3)
    synthesize(tmp_path / "b", 12, 64, seed=3)
    assert sum(a.values()) == 12 and set(a) == {"train", "val", "test"}
    for split in a:
        ann_a = (tmp_path / "a" / split / "annotations.json").read_bytes()
        assert ann_a == (tmp_path / "b" / split / "annotations.json").read_bytes()
        coco = json.loads(ann_a)
        assert [c["name"] for c in coco["categories"]] == CLASSES
        for im in coco["images"]:
            assert (tmp_path / "a" / split / im["file_name"]).read_bytes() == (
                tmp_path / "b" / split / im["file_name"]
            ).read_bytes()
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= 64 and y + h <= 64
    split = load_coco_split(tmp_path / "a" / "train")
    assert split.report["boxes_clipped"] == split.report["boxes_dropped"] == 0


def _image(
    path: Path, size: tuple[int, int] = (40, 30), box: tuple[int, int, int, int] | None = None
) -> None:
    arr = np.zeros((size[1], size[0], 3), dtype=np.uint8)
    if box:
        x0, y0, x1, y1 = box
        arr[y0:y1, x0:x1] = 255
    Image.fromarray(arr).save(path)


@pytest.fixture
def messy_coco(tmp_path: Path) -> Path:
    """Non-contiguous category ids, an image without boxes, a crowd region, bad boxes,
    a missing and a corrupt image."""
    root = tmp_path / "messy"
    root.mkdir()
    for name in ("a.png", "b.png", "empty.png"):
        _image(root / name)
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    coco = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 20, "file_name": "b.png", "width": 40, "height": 30},
            {"id": 30, "file_name": "empty.png", "width": 40, "height": 30},
            {"id": 40, "file_name": "missing.png", "width": 40, "height": 30},
            {"id": 50, "file_name": "corrupt.png", "width": 40, "height": 30},
        ],
        "categories": [{"id": 11, "name": "spur"}, {"id": 3, "name": "short"}, {"id": 7, "name": "open"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [2, 2, 10, 8], "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 11, "bbox": [20, 5, 5, 5], "iscrowd": 1},
            {"id": 3, "image_id": 20, "category_id": 7, "bbox": [30, 20, 20, 20]},  # past the edge
            {"id": 4, "image_id": 20, "category_id": 7, "bbox": [5, 5, -3, 4]},  # negative width
            {"id": 5, "image_id": 20, "category_id": 11, "bbox": [-5, 1, 8, 8]},  # left of the image
            {"id": 6, "image_id": 40, "category_id": 3, "bbox": [1, 1, 4, 4]},
        ],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_messy_coco_fix_policy(messy_coco: Path) -> None:
    split = load_coco_split(messy_coco, bad_boxes="fix", corrupt_images="skip")
    # categories sorted by id -> contiguous labels; the map back keeps the original ids
    assert split.labels == ["short", "open", "spur"]
    assert split.cat_to_label == {3: 0, 7: 1, 11: 2}
    assert split.label_to_cat == {0: 3, 1: 7, 2: 11}
    assert [im["id"] for im in split.images] == [10, 20, 30]  # missing + corrupt skipped
    assert split.report["skipped_images"] == 2
    assert any("missing.png: missing" in u for u in split.report["unreadable"])
    assert any("corrupt.png: corrupt" in u for u in split.report["unreadable"])
    assert split.report["boxes_clipped"] == 2 and split.report["boxes_dropped"] == 1
    assert split.report["images_without_boxes"] == 1 and split.report["crowd_regions"] == 1
    boxes20 = sorted(b for b, _, _ in split.boxes[20])
    assert boxes20 == [[0.0, 1.0, 3.0, 8.0], [30.0, 20.0, 10.0, 10.0]]
    ds = CocoDetection(split, 64, (0.5,) * 3, (0.5,) * 3)
    x, t = ds[0]
    assert x.shape == (3, 64, 64)
    assert t["class_labels"].tolist() == [0]  # the crowd region is no training target
    assert torch.allclose(t["boxes"], torch.tensor([[7 / 40, 6 / 30, 10 / 40, 8 / 30]]), atol=1e-5)
    x, t = ds[2]
    assert t["boxes"].shape == (0, 4)  # an image without boxes is kept


def test_messy_coco_error_policies(messy_coco: Path) -> None:
    with pytest.raises(DataError, match="missing.png"):
        load_coco_split(messy_coco, corrupt_images="error")
    with pytest.raises(DataError, match=r"annotation ids \[3, 4, 5\]"):
        load_coco_split(messy_coco, bad_boxes="error")
    coco = json.loads((messy_coco / "annotations.json").read_text())
    coco["annotations"].append({"id": 9, "image_id": 10, "category_id": 99, "bbox": [1, 1, 2, 2]})
    (messy_coco / "annotations.json").write_text(json.dumps(coco))
    with pytest.raises(DataError, match="unknown category id 99"):
        load_coco_split(messy_coco)


def test_augmentation_moves_boxes_with_pixels(tmp_path: Path) -> None:
    """A white rectangle and its box: after flips, zoom-out and IoU crops the box still covers
    white pixels and nothing else of the image is white."""
    root = tmp_path / "aug"
    root.mkdir()
    _image(root / "a.png", (64, 64), (8, 12, 24, 20))
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 64, "height": 64}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 12, 16, 8]}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    aug = DetectionAugmentation(hflip=0.5, vflip=0.5, color_jitter=0.0, zoom_out=1.0, iou_crop=0.5)
    ds = CocoDetection(
        load_coco_split(root), 64, (0.0,) * 3, (1.0,) * 3, train_transforms(64, aug), train=True
    )
    torch.manual_seed(0)
    for _ in range(12):
        x, t = ds[0]
        assert t["boxes"].shape[0] == 1
        cx, cy, w, h = (t["boxes"][0] * 64).tolist()
        x0, y0, x1, y1 = round(cx - w / 2), round(cy - h / 2), round(cx + w / 2), round(cy + h / 2)
        inside = x[:, y0 + 1 : y1 - 1, x0 + 1 : x1 - 1]
        assert inside.numel() and inside.min() > 0.8
        mask = torch.ones(64, 64, dtype=torch.bool)
        mask[max(0, y0 - 1) : y1 + 1, max(0, x0 - 1) : x1 + 1] = False
        assert x[:, mask].max() < 0.2
