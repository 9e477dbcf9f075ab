"""Unlabelled images: any folder, searched recursively; corrupt files skipped and counted.

Only headers are read when the folder is scanned (``PIL.Image.open``), so start-up does not
decode every image; a file whose pixels fail to decode later is replaced by another image of
the folder and logged, so one bad file cannot stop a long pretraining run.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from trainer.datasets.folder import list_images, load_rgb

log = logging.getLogger(__name__)


@dataclass
class Unlabeled:
    paths: list[Path]
    corrupt: list[Path] = field(default_factory=list)


def _header_ok(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.size[0] > 0 and im.size[1] > 0
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def scan_unlabeled(root: str | Path) -> Unlabeled:
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset.unlabeled_root not found: {root}")
    found = list_images(root)
    good = [p for p in found if _header_ok(p)]
    kept = set(good)
    bad = [p for p in found if p not in kept]
    if bad:
        log.warning(
            "skipped %d unreadable image(s) under %s: %s", len(bad), root, ", ".join(map(str, bad[:10]))
        )
    if not good:
        raise ValueError(f"no readable images under dataset.unlabeled_root={root}")
    return Unlabeled(good, bad)


class MultiViewDataset(Dataset):
    """Each item is the transform's list of views of one image (no label)."""

    def __init__(self, paths: list[Path], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        for _ in range(10):
            try:
                return self.transform(load_rgb(self.paths[i]))
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
                log.warning("cannot decode %s (%s): another image is used", self.paths[i], exc)
                i = random.randrange(len(self.paths))
        raise ValueError(f"10 images in a row failed to decode under {self.paths[0].parent}")


class Uint8Image:
    """The loader's whole job when the views are made on the device
    (:mod:`trainer.ssl.device_views`): the image stretched to ``size`` x ``size`` as a uint8
    ``[3, size, size]`` tensor (a quarter of float32's bytes through the loader's queue)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, image: Image.Image) -> torch.Tensor:
        if image.size != (self.size, self.size):
            image = image.resize((self.size, self.size), Image.Resampling.BILINEAR)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
