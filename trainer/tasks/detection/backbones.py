"""Detection backbones by name: our classification networks, cut to their stride 8/16/32 maps.

The backbone's parameter names are those of the classification model (``trainer.models.backbones``),
so ``model.pretrained_backbone_path`` takes a checkpoint of our own classification trainer (or a
torchvision/timm state dict) as it is. Channel counts per stride are registered here because
the detector's encoder is built from them before any backbone weights exist.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
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


def backbone_module(model: nn.Module) -> BackboneFeatures:
    """The backbone ``build_detector`` placed in the transformers RT-DETR."""
    feats = model.get_submodule("model.backbone.model")
    if not isinstance(feats, BackboneFeatures):
        raise TypeError(f"not one of our detectors: its backbone is a {type(feats).__name__}")
    return feats


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


def load_pretrained_backbone(
    model: nn.Module, path: str | Path, *, allow_unsafe_pickle: bool = False
) -> dict[str, int]:
    """Load a classification checkpoint (ours, torchvision or timm) into the detector's backbone.

    Head tensors are ignored; any other shape mismatch, or a checkpoint that covers less than
    half of the backbone, is refused with the keys named."""
    from trainer.models.safe_load import load_file

    path = Path(path)
    obj = load_file(path, what="model.pretrained_backbone_path", allow_unsafe_pickle=allow_unsafe_pickle)
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
