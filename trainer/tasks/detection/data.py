"""COCO detection data: a split directory ``<root>/<split>/`` with images and ``annotations.json``.

What real COCO files bring, and what we do with it:

- **non-contiguous category ids** (e.g. 1, 3, 7): categories are sorted by id and mapped to
  contiguous label indices 0..K-1; the map travels in checkpoints and manifests so predictions
  are written back with the original ids;
- **images without boxes**: kept (the detector learns "nothing here");
- **``iscrowd: 1``** regions: never a training target; evaluation hands them to COCOeval, which
  ignores detections on them;
- **missing or corrupt image files**: every one is reported with its path; ``dataset.corrupt_images``
  = ``skip`` drops them (counted and logged), ``error`` refuses the split naming the first ones.
  At start-up only each file's header is read (missing files and non-images are found there,
  without decoding thousands of images); a file whose pixel data is broken is found when the
  loader first decodes it, skipped (or refused) then, and counted (:attr:`CocoDetection.corrupt`);
- **bad boxes** (negative or zero size, outside the image): ``dataset.bad_boxes`` = ``fix`` clips a
  box to the image and drops it when less than 1 px remains (counted, logged); ``error`` refuses
  the split naming the annotation ids. An annotation naming an unknown image or category is
  always an error.

Augmentation keeps boxes right by using torchvision ``transforms.v2`` with ``tv_tensors``:
photometric jitter, zoom-out, IoU crop and flips move the boxes with the pixels, then
``SanitizeBoundingBoxes`` drops the ones a crop removed.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

if TYPE_CHECKING:
    from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A COCO split that cannot be used as it is; the message names files and annotation ids."""


@dataclass
class CocoSplit:
    root: Path  # the split directory
    annotation_file: Path
    images: list[dict[str, Any]]  # COCO image records that are usable
    boxes: dict[int, list[tuple[list[float], int, int]]]  # image id -> [(xywh, label, iscrowd)]
    categories: list[dict[str, Any]]  # sorted by id
    cat_to_label: dict[int, int]
    coco: dict[str, Any]  # the (fixed) COCO dict, ground truth for COCOeval
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        return [c["name"] for c in self.categories]

    @property
    def label_to_cat(self) -> dict[int, int]:
        return {v: k for k, v in self.cat_to_label.items()}

    def path_of(self, image: dict[str, Any]) -> Path:
        return self.root / image["file_name"]


def _image_ok(path: Path) -> str | None:
    """Header check only (``Image.open`` is lazy): missing, not an image, or no size."""
    if not path.is_file():
        return "missing"
    try:
        with Image.open(path) as im:
            w, h = im.size
        if w < 1 or h < 1:
            return "corrupt (empty image)"
    except Exception as exc:  # PIL raises many kinds for broken files
        return f"corrupt ({type(exc).__name__}: {exc})"
    return None


def load_coco_split(
    root: str | Path, *, bad_boxes: str = "fix", corrupt_images: str = "skip", check_images: bool = True
) -> CocoSplit:
    """Read and validate ``root/annotations.json`` (see the module docstring for the rules)."""
    root = Path(root)
    ann_path = root / "annotations.json"
    if not ann_path.is_file():
        raise DataError(
            f"no COCO annotations at {ann_path} (a split is <root>/<split>/ with annotations.json)"
        )
    try:
        coco = json.loads(ann_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{ann_path} is not valid JSON: {exc}") from None
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DataError(f"{ann_path}: '{key}' must be a list")
    categories = sorted(coco["categories"], key=lambda c: int(c["id"]))
    if not categories:
        raise DataError(f"{ann_path}: no categories")
    cat_to_label = {int(c["id"]): i for i, c in enumerate(categories)}
    images = {int(im["id"]): im for im in coco["images"]}

    broken: list[str] = []
    broken_ids: set[int] = set()
    if check_images:
        for im in coco["images"]:
            why = _image_ok(root / im["file_name"])
            if why:
                broken.append(f"{root / im['file_name']}: {why}")
                broken_ids.add(int(im["id"]))
    if broken:
        if corrupt_images == "error":
            raise DataError(f"{len(broken)} unreadable images in {root}:\n  " + "\n  ".join(broken[:10]))
        log.warning("skipping %d unreadable images in %s:\n  %s", len(broken), root, "\n  ".join(broken[:20]))

    fixed, dropped, bad = 0, 0, []
    kept_anns = []
    boxes: dict[int, list[tuple[list[float], int, int]]] = {i: [] for i in images}
    for ann in coco["annotations"]:
        aid = ann.get("id")
        image_id = int(ann["image_id"])
        if image_id not in images:
            raise DataError(f"{ann_path}: annotation {aid} names unknown image id {image_id}")
        cat = int(ann["category_id"])
        if cat not in cat_to_label:
            raise DataError(f"{ann_path}: annotation {aid} names unknown category id {cat}")
        if image_id in broken_ids:
            continue
        x, y, w, h = (float(v) for v in ann["bbox"])
        width, height = float(images[image_id]["width"]), float(images[image_id]["height"])
        x0, y0, x1, y1 = max(0.0, x), max(0.0, y), min(width, x + w), min(height, y + h)
        is_bad = w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height
        if is_bad:
            bad.append(aid)
            if bad_boxes == "error":
                continue
            if w <= 0 or h <= 0 or x1 - x0 < 1 or y1 - y0 < 1:
                dropped += 1
                continue
            fixed += 1
            x, y, w, h = x0, y0, x1 - x0, y1 - y0
        crowd = int(ann.get("iscrowd", 0))
        boxes[image_id].append(([x, y, w, h], cat_to_label[cat], crowd))
        kept_anns.append(
            {**ann, "bbox": [x, y, w, h], "area": float(ann.get("area") or w * h), "iscrowd": crowd}
        )
    if bad and bad_boxes == "error":
        raise DataError(
            f"{ann_path}: {len(bad)} boxes with non-positive size or outside their image "
            f"(annotation ids {bad[:10]}); set dataset.bad_boxes=fix to clip or drop them"
        )
    if fixed or dropped:
        log.warning(
            "%s: %d boxes clipped to their image, %d dropped (non-positive size)", ann_path, fixed, dropped
        )
    usable = [im for im in coco["images"] if int(im["id"]) not in broken_ids]
    if not usable:
        raise DataError(f"{root}: no usable images")
    gt = {
        "images": usable,
        "annotations": kept_anns,
        "categories": categories,
        "info": coco.get("info", {}),
    }
    report = {
        "images": len(usable),
        "skipped_images": len(broken),
        "unreadable": broken,
        "boxes": len(kept_anns),
        "boxes_clipped": fixed,
        "boxes_dropped": dropped,
        "images_without_boxes": sum(1 for im in usable if not boxes[int(im["id"])]),
        "crowd_regions": sum(1 for a in kept_anns if a["iscrowd"]),
    }
    return CocoSplit(root, ann_path, usable, boxes, categories, cat_to_label, gt, report)


def train_transforms(image_size: int, aug: Any):
    """Box-preserving augmentation (torchvision v2); ``aug`` is the spec's augmentation section."""
    from torchvision.transforms import v2

    ops: list[Any] = []
    if aug.color_jitter > 0:
        j = aug.color_jitter
        ops.append(v2.RandomApply([v2.ColorJitter(j, j, j, min(0.1, j / 2))], p=0.8))
    if aug.zoom_out > 0:
        ops.append(v2.RandomApply([v2.RandomZoomOut(fill=0, side_range=(1.0, 1.0 + aug.zoom_out))], p=0.5))
    if aug.iou_crop > 0:
        ops.append(v2.RandomApply([v2.RandomIoUCrop()], p=aug.iou_crop))
    if aug.hflip > 0:
        ops.append(v2.RandomHorizontalFlip(aug.hflip))
    if aug.vflip > 0:
        ops.append(v2.RandomVerticalFlip(aug.vflip))
    ops += [v2.Resize((image_size, image_size), antialias=True), v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(ops)


def eval_transforms(image_size: int):
    from torchvision.transforms import v2

    return v2.Compose([v2.Resize((image_size, image_size), antialias=True)])


def _shared_cache(split: CocoSplit, cache_mb: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A shared-memory uint8 ``[N, 3, H, W]`` array (and ``[N]`` filled flags) for the decoded
    images, when they all have one size, fit in ``cache_mb`` and in ``/dev/shm``; else None.
    Loader workers fill it as they first decode an image, so later epochs decode nothing."""
    import shutil

    sizes = {(int(im["width"]), int(im["height"])) for im in split.images}
    if not cache_mb or len(sizes) != 1:
        return None
    (w, h), n = sizes.pop(), len(split.images)
    need = n * 3 * h * w
    try:
        shm_free = shutil.disk_usage("/dev/shm").free
    except OSError:
        shm_free = 0
    if need > cache_mb * 2**20 or need * 1.5 > shm_free:
        log.info(
            "not caching %s: %d MB decoded (cache %d MB, /dev/shm %d MB free)",
            split.root,
            need >> 20,
            cache_mb,
            shm_free >> 20,
        )
        return None
    return torch.empty(n, 3, h, w, dtype=torch.uint8).share_memory_(), torch.zeros(
        n, dtype=torch.bool
    ).share_memory_()


class CocoDetection(torch.utils.data.Dataset):
    """Items: (image tensor [3,S,S] normalised, target dict with ``class_labels`` [n],
    ``boxes`` [n,4] cxcywh in 0..1, ``image_id``, ``orig_size`` (h, w)).

    ``corrupt_images="skip"`` (what the loaders use): an image that fails to decode is logged,
    flagged in the shared :attr:`bad` mask (so workers and epochs agree) and yields ``None``,
    which :func:`collate` drops; ``"error"`` (the default here) raises :class:`DataError` naming
    it. ``cache_mb`` > 0 keeps decoded images in shared memory when they fit."""

    def __init__(
        self,
        split: CocoSplit,
        image_size: int,
        mean,
        std,
        transforms=None,
        train: bool = False,
        *,
        corrupt_images: str = "error",
        cache_mb: float = 0,
    ):
        self.split = split
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)
        self.transforms = transforms or eval_transforms(image_size)
        self.train = train
        self.corrupt_images = corrupt_images
        self.bad = torch.zeros(len(split.images), dtype=torch.bool).share_memory_()
        self.cache = _shared_cache(split, cache_mb)

    def __len__(self) -> int:
        return len(self.split.images)

    @property
    def corrupt(self) -> list[str]:
        """Paths found undecodable so far (in any worker)."""
        return [str(self.split.path_of(self.split.images[int(i)])) for i in self.bad.nonzero().flatten()]

    def _decode(self, index: int) -> torch.Tensor | None:
        from torchvision.transforms.v2 import functional as F

        if self.cache is not None and bool(self.cache[1][index]):
            return self.cache[0][index].clone()
        if bool(self.bad[index]):
            return None
        path = self.split.path_of(self.split.images[index])
        try:
            with Image.open(path) as im:
                pixels = F.pil_to_tensor(im.convert("RGB"))
        except Exception as exc:  # PIL raises many kinds for broken files
            if self.corrupt_images == "error":
                raise DataError(f"{path}: corrupt ({type(exc).__name__}: {exc})") from None
            self.bad[index] = True
            log.warning("skipping unreadable image %s (%s: %s)", path, type(exc).__name__, exc)
            return None
        if self.cache is not None and tuple(pixels.shape) == tuple(self.cache[0].shape[1:]):
            self.cache[0][index] = pixels
            self.cache[1][index] = True
        return pixels

    def __getitem__(self, index: int):
        from torchvision import tv_tensors

        rec = self.split.images[index]
        image_id = int(rec["id"])
        pixels = self._decode(index)
        if pixels is None:
            return None
        h, w = int(pixels.shape[1]), int(pixels.shape[2])
        objs = [(b, lab) for b, lab, crowd in self.split.boxes[image_id] if not crowd]
        xyxy = torch.tensor(
            [[x, y, x + bw, y + bh] for (x, y, bw, bh), _ in objs], dtype=torch.float32
        ).reshape(-1, 4)
        labels = torch.tensor([lab for _, lab in objs], dtype=torch.int64)
        img = tv_tensors.Image(pixels)
        boxes = tv_tensors.BoundingBoxes(xyxy, format="XYXY", canvas_size=(h, w))
        img, tgt = self.transforms(img, {"boxes": boxes, "labels": labels})
        boxes, labels = tgt["boxes"], tgt["labels"]
        x = (img.as_subclass(torch.Tensor).float() / 255.0 - self.mean) / self.std
        size = float(self.image_size)
        b = boxes.as_subclass(torch.Tensor).float() / size
        cxcywh = torch.stack(
            [(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2, b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], 1
        )
        target = {
            "class_labels": labels,
            "boxes": cxcywh.clamp(0, 1),
            "image_id": torch.tensor(image_id),
            "orig_size": torch.tensor([h, w]),
        }
        return x, target


def collate(batch):
    """Stack a batch; items that are None (undecodable images, skipped) are left out."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return torch.zeros(0, 3, 1, 1), []
    images = torch.stack([b[0] for b in batch])
    return images, [b[1] for b in batch]


# ------------------------------------------------------------------ a spec's splits and loaders
def open_split(spec: DetectionSpec, split: str) -> CocoSplit:
    """``<dataset.root>/<split>`` under the spec's bad-box and corrupt-image policies."""
    return load_coco_split(
        Path(spec.dataset.root) / split,
        bad_boxes=spec.dataset.bad_boxes.value,
        corrupt_images=spec.dataset.corrupt_images.value,
    )


def loader(
    spec: DetectionSpec,
    split: CocoSplit,
    *,
    train: bool,
    batch_size: int,
    distributed: bool = False,
    persistent: bool | None = None,
):
    """A DataLoader of ``split`` (augmented and shuffled when ``train``; a DistributedSampler
    under DDP). Undecodable images are skipped or refused by ``dataset.corrupt_images``;
    decoded images are cached in shared memory within ``dataset.cache_mb``; workers default to
    the cores (:func:`trainer.runtime.auto_workers`)."""
    from trainer.runtime import auto_workers

    tf = train_transforms(spec.dataset.image_size, spec.dataset.augmentation) if train else None
    ds = CocoDetection(
        split,
        spec.dataset.image_size,
        spec.dataset.mean,
        spec.dataset.std,
        tf,
        train=train,
        corrupt_images=spec.dataset.corrupt_images.value,
        cache_mb=spec.dataset.cache_mb,
    )
    sampler: torch.utils.data.Sampler[int] | None = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            ds, shuffle=True, seed=spec.seed, drop_last=True
        )
    workers = spec.train.num_workers
    if workers is None:
        cuda = torch.cuda.is_available() and spec.train.device.value != "cpu"
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        workers = auto_workers(torch.device("cuda" if cuda else "cpu"), world)
    keep = (train if persistent is None else persistent) and workers > 0
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=train and len(ds) > batch_size,
        persistent_workers=keep,
        prefetch_factor=4 if workers > 0 else None,
        pin_memory=torch.cuda.is_available(),
    )


def calibration_array(spec: DetectionSpec, split: CocoSplit, n: int) -> np.ndarray:
    """``n`` real images of ``split``, preprocessed as the model sees them, spread over the split."""
    ds = CocoDetection(split, spec.dataset.image_size, spec.dataset.mean, spec.dataset.std)
    n = min(n, len(ds))
    idx = np.linspace(0, len(ds) - 1, n).round().astype(int)
    return np.stack([ds[int(i)][0].numpy() for i in idx]).astype(np.float32)
