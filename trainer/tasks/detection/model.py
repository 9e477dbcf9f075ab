"""The RT-DETR detector: Hugging Face ``RTDetrForObjectDetection`` over a backbone chosen by name
(:mod:`trainer.tasks.detection.backbones`), and our checkpoint format for it.

The detector (hybrid encoder, query selection, deformable decoder, Hungarian-matched losses with
denoising) is transformers' maintained implementation, built from an explicit config so nothing
ever reaches a model hub. Its backbone is swapped for one of *our* classification backbones
(torchvision ResNet-18/34/50 and ConvNeXt-Tiny, timm ConvNeXt atto/femto/pico/nano), wrapped to
return the stride 8/16/32 feature maps.

Measured pitfalls handled here: a backbone named by string makes transformers query a hub (we
pass an explicit, throwaway ``backbone_config`` and replace the module); from scratch the default
init (BatchNorm scales ~N(0, 0.01)) collapses the encoder, so every conv/BN is re-initialised
and backbone BatchNorms stay trainable (``freeze_backbone_batch_norms=False``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from trainer.tasks.detection.backbones import BackboneFeatures, backbone_def, load_pretrained_backbone

if TYPE_CHECKING:
    from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)


@dataclass
class DetectorConfig:
    """Everything needed to rebuild a detector (saved in the checkpoint as ``detector``)."""

    backbone: str = "resnet18"
    architecture: str = "rtdetr"  # rtdetr (v1) | rtdetr_v2
    num_labels: int = 6
    num_queries: int = 100
    d_model: int = 128
    encoder_ffn_dim: int = 512
    decoder_ffn_dim: int = 512
    decoder_layers: int = 3
    attention_heads: int = 8
    num_denoising: int = 100
    image_size: int = 256
    id2label: dict[int, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["id2label"] = {str(k): v for k, v in self.id2label.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DetectorConfig:
        d = dict(d)
        d["id2label"] = {int(k): v for k, v in (d.get("id2label") or {}).items()}
        return cls(**d)


def _reinit(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def build_detector(cfg: DetectorConfig) -> nn.Module:
    """A fresh RT-DETR with ``cfg.backbone``; never touches the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import RTDetrResNetConfig

    if cfg.architecture == "rtdetr":
        from transformers import RTDetrConfig as Config
        from transformers import RTDetrForObjectDetection as Detector
    elif cfg.architecture == "rtdetr_v2":
        from transformers import RTDetrV2Config as Config
        from transformers import RTDetrV2ForObjectDetection as Detector
    else:
        raise ValueError(f"unknown detector architecture {cfg.architecture!r}; choose rtdetr or rtdetr_v2")

    chans = list(backbone_def(cfg.backbone).channels)
    # a throwaway one-block backbone with the right channel counts; replaced below
    stub = RTDetrResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, *chans],
        depths=[1, 1, 1, 1],
        layer_type="bottleneck",
        out_features=["stage2", "stage3", "stage4"],
    )
    id2label = cfg.id2label or {i: f"class_{i}" for i in range(cfg.num_labels)}
    no_hub = (
        {"use_pretrained_backbone": False, "use_timm_backbone": False} if cfg.architecture == "rtdetr" else {}
    )
    config = Config(
        backbone_config=stub,
        **no_hub,
        freeze_backbone_batch_norms=False,
        num_labels=cfg.num_labels,
        id2label=id2label,
        label2id={v: k for k, v in id2label.items()},
        encoder_in_channels=chans,
        encoder_hidden_dim=cfg.d_model,
        d_model=cfg.d_model,
        decoder_in_channels=[cfg.d_model] * 3,
        encoder_ffn_dim=cfg.encoder_ffn_dim,
        decoder_ffn_dim=cfg.decoder_ffn_dim,
        encoder_attention_heads=cfg.attention_heads,
        decoder_attention_heads=cfg.attention_heads,
        num_queries=cfg.num_queries,
        decoder_layers=cfg.decoder_layers,
        num_denoising=cfg.num_denoising,
        anchor_image_size=None,
    )
    model = Detector(config)
    _reinit(model.model.encoder)
    _reinit(model.model.encoder_input_proj)
    _reinit(model.model.decoder_input_proj)
    model.model.backbone.model = BackboneFeatures(cfg.backbone)
    model.detector_config = cfg
    return model


def attached_config(model: nn.Module) -> DetectorConfig:
    """The config ``build_detector`` set on the model (also under DDP / torch.compile wrappers)."""
    from trainer.models.checkpoint import unwrap

    cfg = getattr(unwrap(model), "detector_config", None)
    if not isinstance(cfg, DetectorConfig):
        raise TypeError(f"{type(model).__name__} has no detector config: not built by build_detector")
    return cfg


def save_detector(
    model: nn.Module,
    path: str | Path,
    *,
    labels: list[str],
    mean: list[float],
    std: list[float],
    lineage: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    half: bool = False,
    **resume_state: Any,
) -> Path:
    """Our checkpoint format (``trainer.models.checkpoint``) with the detector config added;
    ``half=True`` stores float tensors as fp16 (half the size; loading casts back)."""
    from trainer.models.checkpoint import Checkpoint, save_checkpoint

    cfg = attached_config(model)
    ckpt = Checkpoint(
        model=model,
        backbone=cfg.backbone,
        labels=list(labels),
        image_size=cfg.image_size,
        mean=list(mean),
        std=list(std),
        task="detection",
        lineage=dict(lineage or {}),
        metrics=dict(metrics or {}),
    )
    path = save_checkpoint(ckpt, path, detector=cfg.to_dict(), **resume_state)
    if half:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        payload["state_dict"] = {
            k: (v.half() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()
        }
        torch.save(payload, path)
    return path


@dataclass
class LoadedDetector:
    model: nn.Module
    config: DetectorConfig
    labels: list[str]
    mean: list[float]
    std: list[float]
    lineage: dict[str, Any]
    metrics: dict[str, Any]
    payload: dict[str, Any]


def load_detector(path: str | Path, *, allow_unsafe_pickle: bool = False) -> LoadedDetector:
    """A detection checkpoint of ours (plain data; see ``trainer.models.safe_load.load_file``)."""
    from trainer.models.checkpoint import read_payload
    from trainer.models.safe_load import CheckpointError

    payload = read_payload(path, allow_unsafe_pickle=allow_unsafe_pickle)
    if payload.get("task") != "detection" or "detector" not in payload:
        raise CheckpointError(f"{path} is not a detection checkpoint (task={payload.get('task')!r})")
    cfg = DetectorConfig.from_dict(payload["detector"])
    model = build_detector(cfg)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint {path} does not fit its detector config: {exc}") from None
    return LoadedDetector(
        model=model,
        config=cfg,
        labels=list(payload["labels"]),
        mean=list(payload["mean"]),
        std=list(payload["std"]),
        lineage=dict(payload.get("lineage") or {}),
        metrics=dict(payload.get("metrics") or {}),
        payload=payload,
    )


def detector_config(spec: DetectionSpec, labels: list[str], backbone: str | None = None) -> DetectorConfig:
    """The :class:`DetectorConfig` a spec asks for, for a data set with ``labels``."""
    m = spec.model
    return DetectorConfig(
        backbone=backbone or m.backbone,
        architecture=m.architecture.value,
        num_labels=len(labels),
        num_queries=m.num_queries,
        d_model=m.d_model,
        encoder_ffn_dim=m.encoder_ffn_dim,
        decoder_ffn_dim=m.decoder_ffn_dim,
        decoder_layers=m.decoder_layers,
        attention_heads=m.attention_heads,
        num_denoising=m.num_denoising,
        image_size=spec.dataset.image_size,
        id2label=dict(enumerate(labels)),
    )


def make_model(spec: DetectionSpec, labels: list[str]) -> nn.Module:
    """The model a run starts from: ``model.pretrained_path`` (same classes), else a fresh detector
    with ``model.pretrained_backbone_path`` loaded into its backbone when given."""
    if spec.model.pretrained_path:
        loaded = load_detector(spec.model.pretrained_path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
        if loaded.labels != labels:
            raise ValueError(
                f"model.pretrained_path has labels {loaded.labels}, the data set {labels}: start from "
                "model.pretrained_backbone_path instead when the classes differ"
            )
        return loaded.model
    model = build_detector(detector_config(spec, labels))
    if spec.model.pretrained_backbone_path:
        load_pretrained_backbone(
            model, spec.model.pretrained_backbone_path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle
        )
    return model
