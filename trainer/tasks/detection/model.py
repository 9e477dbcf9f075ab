"""The RT-DETR detector: Hugging Face ``RTDetrForObjectDetection`` over a backbone chosen by name.

The detector (hybrid encoder, query selection, deformable decoder, Hungarian-matched losses with
denoising) is transformers' maintained implementation, built from an explicit config so nothing
ever reaches a model hub. Its backbone is swapped for one of *our* classification backbones
(torchvision ResNet-18/34/50 and ConvNeXt-Tiny, timm ConvNeXt atto/femto/pico/nano), wrapped to
return the stride 8/16/32 feature maps: the backbone's parameter names are those of the
classification model, so ``model.pretrained_backbone_path`` takes a checkpoint of our own
classification trainer (or a torchvision/timm state dict) as it is.

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
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneDef:
    name: str
    library: str  # torchvision | timm
    channels: tuple[int, int, int]  # strides 8, 16, 32


_BACKBONES: dict[str, BackboneDef] = {}


def _register(name: str, library: str, channels: tuple[int, int, int]) -> None:
    if name in _BACKBONES:
        raise KeyError(f"detection backbone {name!r} is already registered")
    _BACKBONES[name] = BackboneDef(name, library, channels)


_register("resnet18", "torchvision", (128, 256, 512))
_register("resnet34", "torchvision", (128, 256, 512))
_register("resnet50", "torchvision", (512, 1024, 2048))
_register("convnext_tiny", "torchvision", (192, 384, 768))
_register("convnext_atto", "timm", (80, 160, 320))
_register("convnext_femto", "timm", (96, 192, 384))
_register("convnext_pico", "timm", (128, 256, 512))
_register("convnext_nano", "timm", (160, 320, 640))


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def backbone_def(name: str) -> BackboneDef:
    if name not in _BACKBONES:
        raise ValueError(f"unknown detection backbone {name!r}; choose one of: {', '.join(list_backbones())}")
    return _BACKBONES[name]


class BackboneFeatures(nn.Module):
    """A classification network (``body``, head removed) returning its stride 8/16/32 maps in
    the form transformers' RT-DETR expects (``.feature_maps``)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.library = backbone_def(name).library
        self.channels = list(backbone_def(name).channels)
        if self.library == "torchvision":
            import torchvision.models as tvm

            body = getattr(tvm, name)(weights=None)
            if name.startswith("resnet"):
                body.fc = nn.Identity()
            else:
                body.classifier = nn.Identity()
                body.avgpool = nn.Identity()
        else:
            import timm

            body = timm.create_model(name, pretrained=False, num_classes=0)
            body.head = nn.Identity()  # unused by forward_intermediates: no dead parameters
        self.body = body

    def forward(self, x: torch.Tensor) -> SimpleNamespace:
        b = self.body
        if self.library == "timm":
            maps = b.forward_intermediates(x, indices=[1, 2, 3], intermediates_only=True)
        elif self.name.startswith("resnet"):
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            c2 = b.layer2(b.layer1(x))
            c3 = b.layer3(c2)
            maps = [c2, c3, b.layer4(c3)]
        else:  # torchvision convnext: features[1,3,5,7] are the stages
            maps = []
            for i, stage in enumerate(b.features):
                x = stage(x)
                if i in (3, 5, 7):
                    maps.append(x)
        return SimpleNamespace(feature_maps=list(maps))


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
    model.detector_config = cfg  # type: ignore[attr-defined]
    return model


def backbone_module(model: nn.Module) -> BackboneFeatures:
    return model.model.backbone.model  # type: ignore[return-value]


# ------------------------------------------------------------------ weights
def _state_dict_of(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        if str(obj.get("format", "")).startswith("edgeloop"):
            if obj.get("module") is not None:
                return obj["module"].state_dict()
            return obj["state_dict"]
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return _state_dict_of(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise ValueError("not a recognised checkpoint (expected a state dict, timm/torchvision or edgeloop file)")


def load_pretrained_backbone(model: nn.Module, path: str | Path) -> dict[str, int]:
    """Load a classification checkpoint (ours, torchvision or timm) into the detector's backbone.

    Head tensors are ignored; any other shape mismatch, or a checkpoint that covers less than
    half of the backbone, is refused with the keys named."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model.pretrained_backbone_path not found: {path}")
    obj = torch.load(path, map_location="cpu", weights_only=False)
    state = {k.removeprefix("module."): v for k, v in _state_dict_of(obj).items()}
    # a detection checkpoint's backbone, too
    prefix = "model.backbone.model.body."
    if any(k.startswith(prefix) for k in state):
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    body = backbone_module(model).body
    own = body.state_dict()
    mismatched = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and own[k].shape != v.shape
    ]
    loadable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in loadable and not k.endswith("num_batches_tracked")]
    if mismatched or len(loadable) < 0.5 * len(own):
        raise ValueError(
            f"{path} does not fit detection backbone {backbone_module(model).name!r}: "
            f"{len(loadable)}/{len(own)} tensors fit, {len(mismatched)} shape mismatches"
            + ("\n  " + "\n  ".join(mismatched[:8]) if mismatched else "")
            + (f"\n  missing e.g. {missing[:5]}" if missing else "")
        )
    body.load_state_dict(loadable, strict=False)
    if missing:
        log.warning("%d backbone tensors not in %s (kept initialised): %s", len(missing), path, missing[:5])
    log.info("loaded %d backbone tensors from %s", len(loadable), path)
    return {"loaded": len(loadable), "missing": len(missing)}


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
    from trainer.models.checkpoint import Checkpoint, save_checkpoint, unwrap

    cfg: DetectorConfig = unwrap(model).detector_config  # type: ignore[assignment]
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


def load_detector(path: str | Path) -> LoadedDetector:
    from trainer.models.checkpoint import read_payload

    payload = read_payload(path)
    if payload.get("task") != "detection" or "detector" not in payload:
        raise ValueError(f"{path} is not a detection checkpoint (task={payload.get('task')!r})")
    cfg = DetectorConfig.from_dict(payload["detector"])
    model = build_detector(cfg)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in payload["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"checkpoint {path} does not fit its detector config: {exc}") from None
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
