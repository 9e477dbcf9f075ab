"""On-device INT8 calibration data: a folder of sample images, preprocessed with the manifest.

The controller ships an FP32 ONNX plus a calibration shard, and each device quantizes with the
recipe of its own backend: one INT8 file does not suit every backend (ONNX Runtime on x86 is
fast with uint8 activations, TensorRT wants symmetric int8 Q/DQ; docs/agent.md). The shard's
identity (image bytes, preprocessing, sample count) goes into the engine key, so another shard
builds another engine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from agent.backends.base import CalibrationFeeds, fixed_batch
from agent.preprocess import ImageFolder, Preprocessor, batched, feeds_for
from protos import artifact_pb2
from protos.manifest import manifest_to_json, sha256_file

DEFAULT_CALIBRATION_SAMPLES = 256


def batch_size_for(manifest: artifact_pb2.Manifest, wanted: int) -> int:
    """``wanted``, unless the model's first input has a fixed batch dimension."""
    fixed = fixed_batch(manifest.inputs[0].shape) if manifest.inputs else None
    return fixed or wanted


def calibration_feeds(
    manifest: artifact_pb2.Manifest,
    calib_dir: str | Path,
    *,
    limit: int = DEFAULT_CALIBRATION_SAMPLES,
    batch_size: int = 8,
) -> tuple[CalibrationFeeds, str, int]:
    """Returns (feeds factory, calibration id, sample count) for ``BuildOptions``."""
    folder = ImageFolder.open(calib_dir).subset(limit)
    preprocess = Preprocessor.from_manifest(manifest)
    fixed = fixed_batch(manifest.inputs[0].shape) if manifest.inputs else None
    batch = fixed or batch_size
    digest = hashlib.sha256()
    for path, _ in folder.samples:
        digest.update(sha256_file(path).encode())
    pre = artifact_pb2.Manifest(preprocessing=manifest.preprocessing, inputs=manifest.inputs)
    digest.update(manifest_to_json(pre).encode())
    digest.update(f"{len(folder)}:{batch}".encode())

    def feeds() -> Iterator[dict[str, np.ndarray]]:
        for images, _ in batched(folder, preprocess, batch):
            if fixed and images.shape[0] != fixed:
                break  # a static-batch model cannot take the short last batch
            yield feeds_for(manifest, images)

    return feeds, digest.hexdigest()[:16], len(folder)
