"""Backbones by name: a swap is a string in the spec, never a code change.

Each entry is a factory ``(num_classes) -> nn.Module`` from a maintained library (torchvision or
timm; timm is imported only when a timm model is asked for) plus the dotted name of its
classifier head, which pruning leaves alone and transfer learning replaces. Any other timm model
is reachable as ``timm:<name>``. A duplicate registration is an error.

``load_pretrained`` reads a local checkpoint (torchvision or timm state dict, a dict with
``state_dict``/``model``, or our own format), drops the old head when its shape does not fit the
user's classes, and refuses any other shape mismatch with the keys and shapes named.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneInfo:
    name: str
    factory: Callable[[int], nn.Module]
    head: str  # dotted module name of the final classifier layer
    library: str
    family: str  # resnet | mobilenet | efficientnet | convnext | vit


_BACKBONES: dict[str, BackboneInfo] = {}


def register_backbone(name: str, *, head: str, library: str, family: str):
    def deco(factory: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
        if name in _BACKBONES:
            raise KeyError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = BackboneInfo(name, factory, head, library, family)
        return factory

    return deco


def list_backbones() -> list[str]:
    return sorted(_BACKBONES)


def backbone_info(name: str) -> BackboneInfo:
    if name in _BACKBONES:
        return _BACKBONES[name]
    if name.startswith("timm:"):
        timm_name = name.split(":", 1)[1]

        def factory(n: int, _m: str = timm_name) -> nn.Module:
            import timm

            return timm.create_model(_m, pretrained=False, num_classes=n)

        model = factory(2)
        head = _timm_head_name(model)
        return BackboneInfo(name, factory, head, "timm", timm_name.split("_")[0])
    raise ValueError(
        f"unknown backbone {name!r}; choose one of: {', '.join(list_backbones())} or timm:<name>"
    )


def _timm_head_name(model: nn.Module) -> str:
    classifier = model.get_classifier()  # type: ignore[operator]
    for n, m in model.named_modules():
        if m is classifier:
            return n
    raise ValueError("timm model has no named classifier module")


def _tv(builder: str, **kwargs: Any) -> Callable[[int], nn.Module]:
    def factory(num_classes: int) -> nn.Module:
        import torchvision.models as tvm

        return getattr(tvm, builder)(weights=None, num_classes=num_classes, **kwargs)

    return factory


for _name, _head, _family in [
    ("resnet18", "fc", "resnet"),
    ("resnet34", "fc", "resnet"),
    ("resnet50", "fc", "resnet"),
    ("mobilenet_v3_small", "classifier.3", "mobilenet"),
    ("mobilenet_v3_large", "classifier.3", "mobilenet"),
    ("efficientnet_b0", "classifier.1", "efficientnet"),
    ("convnext_tiny", "classifier.2", "convnext"),
]:
    register_backbone(_name, head=_head, library="torchvision", family=_family)(_tv(_name))


@register_backbone("convnext_atto", head="head.fc", library="timm", family="convnext")
def _convnext_atto(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("convnext_atto", pretrained=False, num_classes=num_classes)


@register_backbone("vit_tiny", head="head", library="timm", family="vit")
def _vit_tiny(num_classes: int) -> nn.Module:
    import timm

    # dynamic_img_size: the patch grid follows dataset.image_size instead of a fixed 224
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=num_classes, dynamic_img_size=True
    )


def get_submodule(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n]
        import difflib

        near = difflib.get_close_matches(name, names, n=5)
        raise ValueError(
            f"module {name!r} not found in the model; closest names: {near or names[:8]}"
        ) from None


def head_module(model: nn.Module, backbone: str) -> nn.Module:
    return get_submodule(model, backbone_info(backbone).head)


def build_model(backbone: str, num_classes: int) -> nn.Module:
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {num_classes}")
    model = backbone_info(backbone).factory(num_classes)
    return model


# ------------------------------------------------------------------ pretrained weights
class CheckpointMismatchError(ValueError):
    """A checkpoint whose tensors do not fit the model."""


def _extract_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if isinstance(obj, dict):
        if obj.get("format", "").startswith("edgeloop"):
            if obj.get("module") is not None:
                return obj["module"].state_dict()
            return obj["state_dict"]
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if key in obj and isinstance(obj[key], (dict, nn.Module)):
                return _extract_state_dict(obj[key])
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise CheckpointMismatchError(
        "not a recognised checkpoint (expected a state dict, timm/torchvision or edgeloop)"
    )


def load_pretrained(
    model: nn.Module, path: str | Path, backbone: str, *, allow_unsafe_pickle: bool = False
) -> dict[str, int]:
    """Load backbone weights from a local file into ``model``; the head is re-initialised if
    its shape differs (new classes). Returns counts of loaded / skipped tensors. The file is
    read as plain data (``trainer.models.safe_load.load_file``)."""
    from trainer.models.safe_load import load_file

    path = Path(path)
    obj = load_file(path, what="model.pretrained_path", allow_unsafe_pickle=allow_unsafe_pickle)
    state = {k.removeprefix("module."): v for k, v in _extract_state_dict(obj).items()}
    own = model.state_dict()
    head = backbone_info(backbone).head + "."
    mismatched, skipped_head = [], []
    filtered: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if k not in own:
            continue
        if own[k].shape != v.shape:
            if k.startswith(head):
                skipped_head.append(k)
                continue
            mismatched.append(f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}")
            continue
        filtered[k] = v
    missing = [
        k for k in own if k not in state and not k.startswith(head) and not k.endswith("num_batches_tracked")
    ]
    unexpected = [k for k in state if k not in own]
    if mismatched or (missing and len(missing) > 0.5 * len(own)):
        lines = mismatched[:10]
        raise CheckpointMismatchError(
            f"checkpoint {path} does not fit backbone {backbone!r}: "
            f"{len(mismatched)} shape mismatches, {len(missing)} missing and {len(unexpected)} unexpected keys"
            + ("\n  " + "\n  ".join(lines) if lines else "")
            + (f"\n  missing e.g. {missing[:5]}" if missing else "")
        )
    model.load_state_dict(filtered, strict=False)
    if skipped_head:
        log.info("pretrained head %s has other classes: re-initialised for the user's classes", skipped_head)
    if missing:
        log.warning("%d model tensors not in checkpoint (kept initialised): %s", len(missing), missing[:5])
    return {"loaded": len(filtered), "head_reset": len(skipped_head), "missing": len(missing)}
