"""Raw image -> model input tensor, exactly as the manifest says (numpy + PIL, no torch).

Used for INT8 calibration, evaluation and benchmark samples, so the numbers a device reports are
for the preprocessing the model was trained with. ``resize_mode``:
- ``stretch``: resize to height x width, aspect ratio not kept;
- ``center_crop``: resize the shorter side to cover height x width, keep the aspect, cut the centre;
- ``letterbox``: fit inside height x width keeping the aspect, pad with grey (114).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from protos import artifact_pb2

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}
_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "bicubic": Image.Resampling.BICUBIC,
    "": Image.Resampling.BILINEAR,
}


@dataclass(frozen=True)
class Preprocessor:
    """Callable for one image input: PIL image -> array without the batch dimension."""

    height: int
    width: int
    layout: str = "NCHW"
    dtype: str = "float32"
    resize_mode: str = "stretch"
    interpolation: str = "bilinear"
    color_order: str = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()

    @classmethod
    def from_manifest(cls, manifest: artifact_pb2.Manifest, input_name: str | None = None) -> Preprocessor:
        spec = next((t for t in manifest.inputs if input_name in (None, t.name)), None)
        if spec is None:
            raise ValueError(f"manifest has no input {input_name!r}")
        p = manifest.preprocessing
        if p.resize_mode and p.resize_mode not in ("stretch", "center_crop", "letterbox"):
            raise ValueError(f"unknown resize_mode {p.resize_mode!r}")
        if p.interpolation not in _RESAMPLE:
            raise ValueError(f"unknown interpolation {p.interpolation!r}")
        return cls(
            height=p.height,
            width=p.width,
            layout=spec.layout or "NCHW",
            dtype=spec.dtype or "float32",
            resize_mode=p.resize_mode or "stretch",
            interpolation=p.interpolation or "bilinear",
            color_order=(p.color_order or "RGB").upper(),
            scale=p.scale if p.scale else (1.0 if spec.dtype == "uint8" else 1 / 255),
            mean=tuple(p.mean),
            std=tuple(p.std),
        )

    @property
    def channels(self) -> int:
        return 3

    def geometry(self, iw: int, ih: int) -> tuple[int, int, int, int]:
        """Where an ``iw`` x ``ih`` image goes: resized to ``(nw, nh)``, then cut at ``(left,
        top)`` (``center_crop``) or pasted at ``(left, top)`` on the grey canvas (``letterbox``).
        One rule for every resizer (PIL here, FFmpeg's swscale in the video pipeline)."""
        h, w = self.height, self.width
        if self.resize_mode == "stretch":
            return w, h, 0, 0
        if self.resize_mode == "center_crop":
            ratio = max(w / iw, h / ih)
            nw, nh = max(w, round(iw * ratio)), max(h, round(ih * ratio))
            return nw, nh, (nw - w) // 2, (nh - h) // 2
        ratio = min(w / iw, h / ih)  # letterbox
        nw, nh = max(1, round(iw * ratio)), max(1, round(ih * ratio))
        return nw, nh, (w - nw) // 2, (h - nh) // 2

    def place(self, resized: np.ndarray) -> np.ndarray:
        """An image already resized to ``geometry``'s ``(nw, nh)`` (H, W, C uint8) -> the model's
        height x width: cut (``center_crop``), padded with grey 114 (``letterbox``) or as is."""
        h, w = self.height, self.width
        nh, nw = resized.shape[:2]
        if self.resize_mode == "stretch":
            return resized
        if self.resize_mode == "center_crop":
            left, top = (nw - w) // 2, (nh - h) // 2
            return resized[top : top + h, left : left + w]
        canvas = np.full((h, w, 3), 114, dtype=np.uint8)
        left, top = (w - nw) // 2, (h - nh) // 2
        canvas[top : top + nh, left : left + nw] = resized
        return canvas

    def resize(self, image: Image.Image) -> Image.Image:
        resample = _RESAMPLE[self.interpolation]
        nw, nh, left, top = self.geometry(*image.size)
        resized = image.resize((nw, nh), resample)
        if self.resize_mode == "stretch":
            return resized
        if self.resize_mode == "center_crop":
            return resized.crop((left, top, left + self.width, top + self.height))
        canvas = Image.new("RGB", (self.width, self.height), (114, 114, 114))  # letterbox
        canvas.paste(resized, (left, top))
        return canvas

    def __call__(self, image: Image.Image) -> np.ndarray:
        return self.normalize(np.asarray(self.resize(image.convert("RGB"))))

    def normalize(self, array: np.ndarray) -> np.ndarray:
        """An RGB image at the model's size (H, W, C uint8) -> the input tensor: colour order,
        scale, mean/std, dtype and layout as the manifest says. The channels move first while
        they are bytes, so the float work runs on contiguous planes (the same operations in the
        same order as always: the result is bit-identical)."""
        if self.color_order == "BGR":
            array = array[..., ::-1]
        if self.layout == "NCHW":
            array = array.transpose(2, 0, 1)
        array = np.ascontiguousarray(array)
        if np.dtype(self.dtype) == np.uint8:
            return array
        out = array.astype(np.float32)
        out *= np.float32(self.scale)
        shape = (-1, 1, 1) if self.layout == "NCHW" else (-1,)
        if self.mean:
            out -= np.asarray(self.mean, dtype=np.float32).reshape(shape)
        if self.std:
            out /= np.asarray(self.std, dtype=np.float32).reshape(shape)
        return out.astype(self.dtype, copy=False)

    def load(self, path: str | Path) -> np.ndarray:
        with Image.open(path) as image:
            return self(image)


@dataclass(frozen=True)
class ImageFolder:
    """``root/<class>/<image>``; class index = position of the folder name in ``labels`` when
    the manifest has labels, else the sorted folder order (torchvision's rule)."""

    root: Path
    samples: tuple[tuple[Path, int], ...]
    classes: tuple[str, ...]

    @classmethod
    def open(cls, root: str | Path, labels: Sequence[str] = ()) -> ImageFolder:
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder not found: {root}")
        folders = sorted(p for p in root.iterdir() if p.is_dir())
        if labels:
            index = {name: i for i, name in enumerate(labels)}
            unknown = [f.name for f in folders if f.name not in index]
            if unknown:
                raise ValueError(
                    f"folders {unknown} in {root} are not labels of the model ({list(labels)[:10]}…)"
                )
            classes = tuple(labels)
        else:
            index = {f.name: i for i, f in enumerate(folders)}
            classes = tuple(f.name for f in folders)
        samples = []
        for folder in folders:
            for path in sorted(folder.rglob("*")):
                if path.suffix.lower() in IMAGE_SUFFIXES:
                    samples.append((path, index[folder.name]))
        if not folders:  # a flat folder of images: unlabelled (calibration only)
            samples = [(p, -1) for p in sorted(root.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not samples:
            raise ValueError(f"no images in {root}")
        return cls(root=root, samples=tuple(samples), classes=classes)

    def __len__(self) -> int:
        return len(self.samples)

    def subset(self, limit: int | None) -> ImageFolder:
        if not limit or limit >= len(self.samples):
            return self
        # an even spread over classes, deterministic
        step = len(self.samples) / limit
        picked = tuple(self.samples[int(i * step)] for i in range(limit))
        return ImageFolder(self.root, picked, self.classes)


def batched(
    folder: ImageFolder, preprocess: Preprocessor, batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images, labels) batches in folder order."""
    for start in range(0, len(folder), batch_size):
        chunk = folder.samples[start : start + batch_size]
        images = np.stack([preprocess.load(p) for p, _ in chunk])
        yield images, np.asarray([label for _, label in chunk], dtype=np.int64)


def feeds_for(
    manifest: artifact_pb2.Manifest, images: np.ndarray, input_name: str | None = None
) -> dict[str, np.ndarray]:
    """Feed dict for a batch of preprocessed images: the first image input gets them, any other
    input gets zeros of its spec (batch dimension matched)."""
    batch = images.shape[0]
    image_input = input_name or next(
        (t.name for t in manifest.inputs if t.layout in ("NCHW", "NHWC")), manifest.inputs[0].name
    )
    feeds = {image_input: images}
    for spec in manifest.inputs:
        if spec.name != image_input:
            shape = [batch if i == 0 and d < 0 else max(d, 1) for i, d in enumerate(spec.shape)]
            feeds[spec.name] = np.zeros(shape, dtype=spec.dtype or "float32")
    return feeds
