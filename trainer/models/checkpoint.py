"""Our checkpoint format (``model.pth``): weights plus everything needed to use them.

A dict saved with ``torch.save``::

    format: "edgeloop.v1", task, backbone, labels, image_size, mean, std,
    state_dict, module (the whole nn.Module, only when its structure differs from the
    backbone factory's, i.e. after pruning), lineage {history, prune_ratio, teacher, parent},
    metrics, and for resume: epoch, optimizer, scheduler, scaler, best_metric.

A pruned model cannot be rebuilt from its backbone name, so its whole module is pickled; loading
such a file needs ``weights_only=False`` and therefore trusts the file (only load checkpoints
you made). Unpruned models load with ``weights_only=True``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "edgeloop.v1"


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
        "module": None,
        "lineage": dict(ckpt.lineage),
        "metrics": dict(ckpt.metrics),
        **resume_state,
    }
    if ckpt.structured:
        import copy

        cpu_module = copy.deepcopy(model).to("cpu").to(memory_format=torch.contiguous_format)
        payload["module"] = cpu_module
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # atomic: a crash mid-save never leaves a half-written checkpoint
    return path


def read_payload(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # structured (pruned) checkpoints pickle the module: our own files only
        payload = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(payload, dict) or not str(payload.get("format", "")).startswith("edgeloop"):
        raise ValueError(
            f"{path} is not an edgeloop checkpoint (for torchvision/timm weights use model.pretrained_path)"
        )
    return payload


def load_checkpoint(path: str | Path) -> Checkpoint:
    from trainer.models.backbones import build_model

    payload = read_payload(path)
    if payload.get("module") is not None:
        model = payload["module"]
        structured = True
    else:
        model = build_model(payload["backbone"], len(payload["labels"]))
        try:
            model.load_state_dict(payload["state_dict"])
        except RuntimeError as exc:
            raise ValueError(
                f"checkpoint {path} does not fit backbone {payload['backbone']!r}: {exc}"
            ) from None
        structured = False
    resume = {
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
