"""ImageFolder data (``root/<split>/<class>/*.png``) with an explicit corrupt-image policy.

Corrupt images are found when the split is scanned (``PIL.Image.verify`` on every file, before
any training step), not halfway through an epoch. ``dataset.corrupt_images``:

- ``skip`` (default): the file is left out, counted (``corrupt_images`` in metrics.json and
  status.json) and named in the log;
- ``error``: the action is refused with the first bad file named.

Class names are the sorted sub-folder names of the train split; other splits must use the same
names (a split with an unknown class folder is refused).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


class CorruptImageError(ValueError):
    pass


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def image_ok(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() does not decode pixels; a truncated body fails here
            im.load()
        return True
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
        return False


def class_names(root: Path, split: str = "train") -> list[str]:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"data split folder not found: {folder}")
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(names) < 2:
        raise ValueError(f"{folder} must hold at least 2 class folders, found {names}")
    empty = [str(folder / n) for n in names if not list_images(folder / n)]
    if empty:  # every folder is a class: an empty one would be a class the model never sees
        raise ValueError(
            f"class folder(s) with no images: {', '.join(empty)} (every folder under {folder} is a "
            "class; add images or remove the folder)"
        )
    return names


@dataclass
class Samples:
    items: list[tuple[Path, int]]
    classes: list[str]
    corrupt: list[Path] = field(default_factory=list)


def scan_split(root: Path, split: str, classes: Sequence[str], corrupt_policy: str = "skip") -> Samples:
    folder = Path(root) / split
    if not folder.is_dir():
        raise FileNotFoundError(f"data split folder not found: {folder}")
    present = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = [c for c in present if c not in classes]
    if unknown:
        raise ValueError(
            f"{folder} has class folders {unknown} that are not in the model's classes {list(classes)}"
        )
    items: list[tuple[Path, int]] = []
    corrupt: list[Path] = []
    for idx, name in enumerate(classes):
        sub = folder / name
        if not sub.is_dir():
            continue
        for path in list_images(sub):
            if image_ok(path):
                items.append((path, idx))
            elif corrupt_policy == "error":
                raise CorruptImageError(f"corrupt image {path} (dataset.corrupt_images=error)")
            else:
                corrupt.append(path)
    if corrupt:
        log.warning(
            "%s: skipped %d corrupt image(s) (dataset.corrupt_images=skip): %s",
            split,
            len(corrupt),
            ", ".join(str(p) for p in corrupt[:10]),
        )
    if not items:
        raise ValueError(f"no readable images under {folder}")
    return Samples(items, list(classes), corrupt)


def load_rgb(path: Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")


class ImageListDataset(Dataset):
    def __init__(self, items: Sequence[tuple[Path, int]], transform: Callable | None):
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor | Image.Image, int]:
        """The transformed image (a tensor with the usual transforms), or the PIL image without one."""
        path, label = self.items[i]
        img = load_rgb(path)
        return (self.transform(img) if self.transform else img), label


class PathDataset(Dataset):
    """Unlabelled images for inference: returns (tensor, index)."""

    def __init__(self, paths: Sequence[Path], transform: Callable):
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(load_rgb(self.paths[i])), i


# ------------------------------------------------------------------ transforms
def eval_transform(image_size: int, mean: Sequence[float], std: Sequence[float]):
    """Stretch-resize to a square, scale to 0..1, normalise: what the manifest tells the agent."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize((image_size, image_size), interpolation=T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def train_transform(image_size: int, mean: Sequence[float], std: Sequence[float], aug) -> Callable:
    from torchvision import transforms as T

    ops: list = []
    if aug.random_resized_crop:
        ops.append(T.RandomResizedCrop(image_size, scale=tuple(aug.crop_scale), ratio=(0.9, 1.1)))
    else:
        ops.append(T.Resize((image_size, image_size)))
    if aug.hflip > 0:
        ops.append(T.RandomHorizontalFlip(aug.hflip))
    if aug.vflip > 0:
        ops.append(T.RandomVerticalFlip(aug.vflip))
    if aug.rotation > 0:
        ops.append(T.RandomRotation(aug.rotation))
    if aug.color_jitter > 0:
        j = aug.color_jitter
        ops.append(T.ColorJitter(brightness=j, contrast=j, saturation=j))
    ops += [T.ToTensor(), T.Normalize(list(mean), list(std))]
    return T.Compose(ops)


def preprocess_numpy(paths: Sequence[Path], image_size: int, mean: Sequence[float], std: Sequence[float]):
    """NCHW float32 batch exactly as eval_transform makes it (for ONNX Runtime)."""
    tf = eval_transform(image_size, mean, std)
    return torch.stack([tf(load_rgb(p)) for p in paths]).numpy()
