"""Our checkpoint format (``model.pth``): weights plus everything needed to use them, as plain
data only, so every file loads with ``torch.load(weights_only=True)`` and no file runs code.

A dict saved with ``torch.save``::

    format: "edgeloop.v2", task, backbone, labels, image_size, mean, std,
    state_dict, structure (pruned models only: {module name: {in_channels, out_channels, groups,
    in_features, out_features, num_features, normalized_shape, num_channels, num_groups}}),
    lineage {history, prune_ratio, teacher, parent}, metrics, and for resume: epoch, optimizer,
    scheduler, scaler, best_metric, history.

A pruned model is rebuilt from its backbone name: the factory's module tree, with each module's
channel counts set from ``structure`` and its tensors resized to the state dict's, then the
state dict loaded strictly. (Format v1 pickled a pruned model's whole module; such a legacy file
is refused unless the spec says ``model.allow_unsafe_pickle: true``, see
:func:`trainer.models.safe_load.load_file`.)

Every file goes through ``load_file``: a missing, truncated or junk file, or one that would
run code, is refused with an error naming it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainer.models.safe_load import CheckpointError, load_file

FORMAT = "edgeloop.v2"
# the module attributes Torch-Pruning changes; a pruned model is rebuilt from them
STRUCTURE_ATTRS = (
    "in_channels",
    "out_channels",
    "groups",
    "in_features",
    "out_features",
    "num_features",
    "normalized_shape",
    "num_channels",
    "num_groups",
)


def structure_of(model: nn.Module) -> dict[str, dict[str, Any]]:
    """The channel counts of every module that has any (plain ints and lists)."""
    out: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        attrs: dict[str, Any] = {}
        for a in STRUCTURE_ATTRS:
            v = getattr(module, a, None)
            if isinstance(v, int) and not isinstance(v, bool):
                attrs[a] = v
            elif isinstance(v, (tuple, list)) and all(isinstance(x, int) for x in v):
                attrs[a] = list(v)
        if attrs:
            out[name] = attrs
    return out


def apply_structure(
    model: nn.Module, structure: dict[str, dict[str, Any]], state: dict[str, torch.Tensor]
) -> nn.Module:
    """Give the factory-built ``model`` the pruned channel counts and tensor shapes of a
    checkpoint, so that ``state`` loads strictly."""
    modules = dict(model.named_modules())
    for name, attrs in structure.items():
        if name not in modules:
            raise CheckpointError(f"the checkpoint's structure names a module {name!r} the model lacks")
        for a, v in attrs.items():
            setattr(modules[name], a, tuple(v) if isinstance(v, list) else v)
    for key, value in state.items():
        owner, _, leaf = key.rpartition(".")
        module = modules.get(owner)
        if module is None:
            continue
        if leaf in module._parameters and module._parameters[leaf] is not None:
            old = module._parameters[leaf]
            if old.shape != value.shape:
                module._parameters[leaf] = nn.Parameter(
                    torch.empty(value.shape, dtype=old.dtype), requires_grad=old.requires_grad
                )
        elif leaf in module._buffers and module._buffers[leaf] is not None:
            old_b = module._buffers[leaf]
            if old_b.shape != value.shape:
                module._buffers[leaf] = torch.empty(value.shape, dtype=old_b.dtype)
    return model


@dataclass
class Checkpoint:
    model: nn.Module
    backbone: str
    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    task: str = "classification"
    lineage: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    structured: bool = False  # True: whole module saved (pruned)
    extra: dict[str, Any] = field(default_factory=dict)  # optimizer/scheduler/epoch for resume


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            return model


def save_checkpoint(ckpt: Checkpoint, path: str | Path, **resume_state: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = unwrap(ckpt.model)
    # contiguous NCHW on CPU, so a CUDA/channels_last run loads anywhere
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    payload = {
        "format": FORMAT,
        "task": ckpt.task,
        "backbone": ckpt.backbone,
        "labels": list(ckpt.labels),
        "image_size": int(ckpt.image_size),
        "mean": list(ckpt.mean),
        "std": list(ckpt.std),
        "state_dict": state,
        "lineage": dict(ckpt.lineage),
        "metrics": dict(ckpt.metrics),
        **resume_state,
    }
    if ckpt.structured:
        payload["structure"] = structure_of(model)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a half-written checkpoint
    return path


def read_payload(path: str | Path, *, allow_unsafe_pickle: bool = False) -> dict[str, Any]:
    """The payload dict of one of our checkpoints (see ``trainer.models.safe_load.load_file`` for what is refused)."""
    payload = load_file(path, allow_unsafe_pickle=allow_unsafe_pickle)
    if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("edgeloop"):
        raise CheckpointError(
            f"{path} is not an edgeloop checkpoint (for torchvision/timm weights use model.pretrained_path)"
        )
    missing = [k for k in ("state_dict", "labels", "image_size", "mean", "std") if k not in payload]
    if missing:
        raise CheckpointError(f"{path} is an incomplete edgeloop checkpoint: no {', '.join(missing)}")
    return payload


def load_checkpoint(path: str | Path, *, allow_unsafe_pickle: bool = False) -> Checkpoint:
    """One of our classification checkpoints, its model rebuilt from the backbone factory."""
    from trainer.models.backbones import build_model

    payload = read_payload(path, allow_unsafe_pickle=allow_unsafe_pickle)
    structured = False
    if payload.get("module") is not None:  # format v1, pickled module: loaded only when allowed
        model = payload["module"]
        structured = True
    else:
        model = build_model(payload["backbone"], len(payload["labels"]))
        if payload.get("structure"):
            apply_structure(model, payload["structure"], payload["state_dict"])
            structured = True
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint {path} does not fit backbone {payload['backbone']!r}: {exc}"
            ) from None
    resume: dict[str, Any] = {
        k: payload[k]
        for k in ("epoch", "optimizer", "scheduler", "scaler", "best_metric", "history")
        if k in payload
    }
    return Checkpoint(
        model=model.eval(),
        backbone=payload["backbone"],
        labels=list(payload["labels"]),
        image_size=int(payload["image_size"]),
        mean=list(payload["mean"]),
        std=list(payload["std"]),
        task=payload.get("task", "classification"),
        lineage=dict(payload.get("lineage") or {}),
        metrics=dict(payload.get("metrics") or {}),
        structured=structured,
        extra=resume,
    )


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
