"""The ``ssl:`` spec section (shared by every task that registers the ssl action)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator

from trainer.spec import Section, SpecError


class SSLMethod(str, Enum):
    dino = "dino"  # lightly's DINO: invariance across multi-crop views (CNN and ViT)
    mim = "mim"  # masked image modelling for CNNs (trainer.ssl.mim): reconstruct hidden squares


class AugmentOn(str, Enum):
    auto = "auto"  # the device on CUDA, the loader workers on CPU
    cpu = "cpu"  # lightly's DINOTransform in the loader workers (PIL)
    device = "device"  # trainer.ssl.device_views on the training device


def _scale(v: tuple[float, float]) -> tuple[float, float]:
    if not 0 < v[0] <= v[1] <= 1:
        raise ValueError("must be two numbers 0 < low <= high <= 1")
    return v


class SSLSpec(Section):
    """Self-supervised pretraining on ``dataset.unlabeled_root``; device, AMP and loader workers
    come from the ``train`` section (``train.device``, ``train.amp``, ``train.num_workers``)."""

    method: SSLMethod = Field(
        SSLMethod.dino,
        description="dino (lightly; CNN and ViT backbones) or mim (masked image modelling, resnet "
        "backbones; one view cropped by global_crop_scale, the multi-crop keys unused)",
    )
    epochs: int = Field(100, ge=1, description="schedule horizon (lr, teacher momentum) in epochs")
    time_limit_s: float = Field(
        0.0, ge=0, description="0 = none; else the schedule is shortened to the epochs that fit it"
    )
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0, description="AdamW peak learning rate (after warmup)")
    min_lr: float = Field(1e-6, ge=0)
    weight_decay: float = Field(0.04, ge=0)
    warmup_epochs: int = Field(5, ge=0)
    max_steps_per_epoch: int = Field(0, ge=0, description="0 = the whole folder (for smoke runs)")
    hidden_dim: int = Field(512, ge=8, description="projection head hidden size")
    bottleneck_dim: int = Field(64, ge=8)
    output_dim: int = Field(2048, ge=8, description="prototypes (DINO's K)")
    student_temp: float = Field(0.1, gt=0)
    teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp: float = Field(0.04, gt=0)
    warmup_teacher_temp_epochs: int = Field(0, ge=0)
    momentum_start: float = Field(0.996, ge=0, lt=1, description="teacher EMA, cosine to 1.0")
    freeze_last_layer_epochs: int = Field(1, ge=0)
    local_views: int = Field(6, ge=0, description="small crops per image besides the 2 global ones")
    local_crop_size: int | None = Field(None, ge=8, description="default dataset.image_size // 2")
    global_crop_scale: tuple[float, float] = (0.4, 1.0)
    local_crop_scale: tuple[float, float] = (0.05, 0.4)
    vflip: float = Field(0.0, ge=0, le=1, description="vertical flip probability (top-down images)")
    color_jitter: float = Field(0.8, ge=0, le=1, description="probability of colour jitter")
    solarization: float = Field(0.2, ge=0, le=1)
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="mim: fraction of the squares hidden")
    mask_patch: int | None = Field(
        None, ge=2, description="mim: side of a mask square in px; default dataset.image_size // 8"
    )
    decoder_dim: int = Field(256, ge=8, description="mim: width of the (discarded) decoder")
    augment_on: AugmentOn = Field(
        AugmentOn.auto,
        description="where the multi-crop views are made: auto = the GPU when training on one, else "
        "the loader workers",
    )

    @field_validator("global_crop_scale", "local_crop_scale")
    @classmethod
    def _scales_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        return _scale(v)


def check_unlabeled_root(value: str | None) -> None:
    """Refuse a missing or image-less ``dataset.unlabeled_root`` before any work."""
    from trainer.datasets.folder import IMAGE_EXTENSIONS

    if not value:
        raise SpecError(
            "key 'dataset.unlabeled_root': required for the ssl action (a folder of images, searched recursively)"
        )
    root = Path(value)
    if not root.is_dir():
        raise SpecError(f"key 'dataset.unlabeled_root': folder not found: {root}")
    if not any(p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() for p in root.rglob("*")):
        raise SpecError(
            f"key 'dataset.unlabeled_root': no images under {root} (searched recursively for "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
