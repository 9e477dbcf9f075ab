"""Start-up reads image headers only; broken pixel data is found, skipped and counted when the
loader first decodes it (in any worker process); decoded images are cached in shared memory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.tasks.detection.data import CocoDetection, DataError, collate, load_coco_split


@pytest.fixture
def split_dir(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    root.mkdir()
    images, anns = [], []
    for i in range(6):
        arr = np.full((32, 48, 3), 40 * i, dtype=np.uint8)
        Image.fromarray(arr).save(root / f"{i}.png")
        images.append({"id": i + 1, "file_name": f"{i}.png", "width": 48, "height": 32})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "bbox": [4, 4, 10, 10]})
    # a PNG with a valid header whose pixel data is cut off: only decoding finds it
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 48, 3), dtype=np.uint8)).save(root / "3.png")
    data = (root / "3.png").read_bytes()
    (root / "3.png").write_bytes(data[: len(data) // 2])
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "spur"}]}
    (root / "annotations.json").write_text(json.dumps(coco))
    return root


def test_startup_reads_headers_only(split_dir, monkeypatch):
    decoded = []
    real_load = Image.Image.load

    def counting_load(self):
        decoded.append(self)
        return real_load(self)

    monkeypatch.setattr(Image.Image, "load", counting_load)
    split = load_coco_split(split_dir, corrupt_images="skip")
    assert decoded == []  # no image decoded at start-up
    assert len(split.images) == 6 and split.report["skipped_images"] == 0


def test_broken_pixels_are_skipped_and_counted_across_workers(split_dir):
    split = load_coco_split(split_dir, corrupt_images="skip")
    ds = CocoDetection(split, 32, (0.5,) * 3, (0.5,) * 3, corrupt_images="skip")
    dl = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, collate_fn=collate)
    ids = [int(t["image_id"]) for _, targets in dl for t in targets]
    assert sorted(ids) == [1, 2, 3, 5, 6]  # image 4 (3.png) left out
    assert ds.corrupt == [str(split_dir / "3.png")]  # the mask is shared with the workers


def test_broken_pixels_refused_under_error_policy(split_dir):
    split = load_coco_split(split_dir, corrupt_images="error")  # the header is fine
    ds = CocoDetection(split, 32, (0.5,) * 3, (0.5,) * 3, corrupt_images="error")
    with pytest.raises(DataError, match="3.png: corrupt"):
        ds[3]


def test_decoded_images_are_cached_in_shared_memory(split_dir, monkeypatch):
    split = load_coco_split(split_dir, corrupt_images="skip")
    ds = CocoDetection(split, 32, (0.5,) * 3, (0.5,) * 3, corrupt_images="skip", cache_mb=1)
    assert ds.cache is not None
    first = [ds[i] for i in (0, 1)]
    dl = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate)
    list(dl)  # the workers fill the shared cache
    assert ds.cache[1].tolist() == [True, True, True, False, True, True]

    def no_decoding(*a, **k):
        raise AssertionError("decoded again")

    monkeypatch.setattr(Image, "open", no_decoding)
    again = [ds[i] for i in (0, 1)]
    for (x0, t0), (x1, t1) in zip(first, again, strict=True):
        assert torch.equal(x0, x1) and torch.equal(t0["boxes"], t1["boxes"])
    assert ds[3] is None  # known bad: not retried


def test_no_cache_when_it_does_not_fit(split_dir):
    split = load_coco_split(split_dir, corrupt_images="skip")
    assert CocoDetection(split, 32, (0.5,) * 3, (0.5,) * 3, cache_mb=0.001).cache is None
