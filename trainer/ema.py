"""Exponential moving average of a model's weights (the RT-DETR and YOLO recipes' ``ModelEMA``).

The averaged copy is what gets validated, kept as the best model and exported: it is smoother
than the last step's weights and, on short schedules, usually a few mAP points better. The
decay ramps up as ``decay * (1 - exp(-updates / warmup_steps))`` so the first steps' random
weights are forgotten quickly. Float tensors are averaged with one fused ``_foreach_lerp_``;
integer buffers (BatchNorm's step counters) are copied.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)  # DDP / DataParallel hold the trained module here
    return inner if isinstance(inner, nn.Module) else model


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float = 0.999, warmup_steps: int = 200):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.module = copy.deepcopy(_unwrap(model)).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay = decay
        self.warmup_steps = max(1, warmup_steps)
        self.updates = 0
        self._pairs: (
            tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]] | None
        )
        self._pairs = None

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.warmup_steps))

    def _tensors(self, model: nn.Module):
        src = _unwrap(model)
        ema_t = list(self.module.state_dict(keep_vars=True).values())
        src_t = list(src.state_dict(keep_vars=True).values())
        if len(ema_t) != len(src_t):
            raise ValueError("the EMA copy and the model have different tensors")
        fe, fs, ie, is_ = [], [], [], []
        for e, s in zip(ema_t, src_t, strict=True):
            if e.is_floating_point():
                fe.append(e.data)
                fs.append(s.data)
            else:
                ie.append(e.data)
                is_.append(s.data)
        return fe, fs, ie, is_

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        if self._pairs is None:
            self._pairs = self._tensors(model)
        self.updates += 1
        fe, fs, ie, is_ = self._pairs
        torch._foreach_lerp_(fe, fs, 1.0 - self.current_decay())
        for e, s in zip(ie, is_, strict=True):
            e.copy_(s)

    def to(
        self, device: torch.device, memory_format: torch.memory_format = torch.preserve_format
    ) -> ModelEMA:
        """Move the copy like the trained model (same device and memory format: the fused
        update then runs on tensors laid out alike)."""
        # Module.to accepts device and memory_format together; torch's overloads list them apart.
        self.module.to(device, memory_format=memory_format)  # type: ignore[call-overload]
        self._pairs = None
        return self
