"""``prune``: structured channel pruning of a trained classifier (the head is kept)."""

from __future__ import annotations

import logging

import torch

from trainer.models.backbones import head_module
from trainer.models.checkpoint import load_checkpoint, save_checkpoint
from trainer.runtime import ActionOutput, RunContext
from trainer.tasks.classification.common import resolve
from trainer.tasks.classification.pruning import prune_model
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def run(spec: ClassificationSpec, ctx: RunContext) -> ActionOutput:
    """Structured channel pruning (Torch-Pruning dependency graph); the head is kept."""
    path = resolve(spec.prune.checkpoint, ctx.default_checkpoint("train"))
    ck = load_checkpoint(path, allow_unsafe_pickle=spec.model.allow_unsafe_pickle)
    model = ck.model.eval()
    example = torch.randn(1, 3, ck.image_size, ck.image_size)
    p = spec.prune
    stats = prune_model(
        model,
        example,
        ignored=[head_module(model, ck.backbone)],
        mode=p.mode.value,
        ratio=p.ratio,
        threshold=p.threshold,
        max_ratio=p.max_ratio,
        round_to=p.round_to,
        importance=p.importance,
        global_pruning=p.global_pruning,
    )
    with torch.no_grad():
        out = model(example)
    if out.shape[1] != len(ck.labels):
        raise RuntimeError(f"pruning changed the number of outputs to {out.shape[1]}")
    lineage = dict(ck.lineage)
    ratio = p.ratio if p.mode.value == "ratio" else 1 - stats["params_ratio"]
    lineage.update(
        action="prune",
        prune_ratio=ratio,
        parent_version=str(path),
        history=[
            *lineage.get("history", []),
            f"prune:{p.mode.value}={p.ratio if p.mode.value == 'ratio' else p.threshold}",
        ],
    )
    ck.model, ck.structured, ck.lineage = model, True, lineage
    save_checkpoint(ck, ctx.out_dir / "model.pth")
    log.info(
        "params %.2fM -> %.2fM, MACs %.3fG -> %.3fG",
        stats["params_before"] / 1e6,
        stats["params_after"] / 1e6,
        stats["macs_before"] / 1e9,
        stats["macs_after"] / 1e9,
    )
    metrics = {
        **stats,
        "mode": p.mode.value,
        "ratio": p.ratio,
        "round_to": p.round_to,
        "backbone": ck.backbone,
    }
    if p.mode.value == "threshold":
        metrics["threshold"] = p.threshold
    return ActionOutput(metrics=metrics, model_path=ctx.out_dir / "model.pth")
