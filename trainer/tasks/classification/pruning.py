"""Structured channel pruning with Torch-Pruning's dependency graph (pinned torch-pruning==1.6.1).

The dependency graph finds every layer coupled to a channel (convs, BNs, residual adds,
concats), so removing channels keeps the network valid; ``round_to`` keeps channel counts a
multiple of 8 (tensor-core and SIMD friendly); the classifier is in ``ignored_layers`` so the
outputs stay the user's classes. Two modes:

- ``ratio``: remove that fraction of channels in every prunable group (TP's ``pruning_ratio``,
  a channel ratio, not a parameter ratio);
- ``threshold``: per group, remove the channels whose importance divided by the group's largest
  is below the threshold (TAO's ``-pth``), at most ``max_ratio`` of a group.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

log = logging.getLogger(__name__)


def complexity(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example)
    model.train(was_training)
    return {"params": float(params), "macs": float(macs)}


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    *,
    ignored: Sequence[nn.Module],
    mode: str = "ratio",
    ratio: float = 0.5,
    threshold: float = 0.1,
    max_ratio: float = 0.9,
    round_to: int = 8,
    importance: str = "l2",
    global_pruning: bool = False,
) -> dict[str, float]:
    """Prune ``model`` in place; returns params/MACs before and after."""
    import torch_pruning as tp

    model.eval()
    before = complexity(model, example)
    imp = tp.importance.GroupMagnitudeImportance(p=1 if importance == "l1" else 2)
    kwargs = dict(
        importance=imp,
        ignored_layers=list(ignored),
        round_to=round_to,
        global_pruning=global_pruning,
    )
    if mode == "threshold":
        probe = tp.pruner.BasePruner(model, example, pruning_ratio=0.0, **kwargs)
        ratios: dict[nn.Module, float] = {}
        for group in probe.DG.get_all_groups(
            ignored_layers=probe.ignored_layers, root_module_types=probe.root_module_types
        ):
            scores = imp(group)
            if scores is None or scores.numel() == 0:
                continue
            norm = scores / scores.max().clamp_min(1e-12)
            frac = float((norm < threshold).float().mean())
            if frac > 0:
                ratios[group[0].dep.target.module] = min(frac, max_ratio)
        log.info("threshold %.3f: %d groups to prune", threshold, len(ratios))
        pruner = tp.pruner.BasePruner(model, example, pruning_ratio=0.0, pruning_ratio_dict=ratios, **kwargs)
    else:
        pruner = tp.pruner.BasePruner(model, example, pruning_ratio=ratio, **kwargs)
    pruner.step()
    after = complexity(model, example)
    return {
        "params_before": before["params"],
        "params_after": after["params"],
        "macs_before": before["macs"],
        "macs_after": after["macs"],
        "params_ratio": after["params"] / before["params"],
        "macs_ratio": after["macs"] / before["macs"],
    }
