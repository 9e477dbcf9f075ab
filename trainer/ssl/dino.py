"""DINO around one of our backbones: lightly's projection head and loss, an EMA teacher.

The backbone is the classification network of ``backbone_name`` (trainer.models.backbones)
with its classifier replaced by ``nn.Identity``: its parameter names are then exactly those of
the classification model minus the head, and those of the detection backbone's body, which is
what lets both tasks load the result without any key mapping.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from trainer.models.backbones import backbone_info, build_model


def classification_name(name: str) -> str:
    """Our classification backbone of that name, else the timm model (detection's convnext_femto ...)."""
    from trainer.models.backbones import list_backbones

    return name if name in list_backbones() or name.startswith("timm:") else f"timm:{name}"


def headless_backbone(
    name: str, image_size: int, init_path: str | None = None, *, min_size: int | None = None
) -> tuple[nn.Module, int]:
    """(network returning pooled features, feature dimension); ``init_path`` loads weights first.

    The network is probed at ``image_size`` and ``min_size`` (the local crops), so a crop the
    backbone cannot take is refused before training, naming the keys to change."""
    model = build_model(name, 2)
    if init_path:
        from trainer.models.backbones import load_pretrained

        load_pretrained(model, init_path, name)
    head = backbone_info(name).head
    parent_name, _, leaf = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, leaf, nn.Identity())
    was = model.training
    model.eval()
    dims = set()
    for size in sorted({image_size, min_size or image_size}):
        try:
            with torch.no_grad():
                out = model(torch.zeros(2, 3, size, size))
        except RuntimeError as exc:
            raise ValueError(
                f"backbone {name!r} cannot take {size}px crops ({exc}); raise ssl.local_crop_size "
                "or dataset.image_size"
            ) from None
        if out.ndim != 2:
            raise ValueError(
                f"backbone {name!r} without its head gives {tuple(out.shape)}, not (batch, features)"
            )
        dims.add(int(out.shape[1]))
    model.train(was)
    return model, dims.pop()


class DINO(nn.Module):
    """Student (backbone + head, trained) and teacher (EMA copy, no gradients)."""

    def __init__(
        self, backbone: nn.Module, feat_dim: int, *, hidden: int, bottleneck: int, out: int, freeze_last: int
    ):
        super().__init__()
        from lightly.models.modules import DINOProjectionHead
        from lightly.models.utils import deactivate_requires_grad

        self.student_backbone = backbone
        self.student_head = DINOProjectionHead(
            feat_dim, hidden, bottleneck, out, freeze_last_layer=freeze_last
        )
        self.teacher_backbone = copy.deepcopy(backbone)
        self.teacher_head = DINOProjectionHead(feat_dim, hidden, bottleneck, out)
        self.teacher_head.load_state_dict(self.student_head.state_dict())
        deactivate_requires_grad(self.teacher_backbone)
        deactivate_requires_grad(self.teacher_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student_head(self.student_backbone(x))

    def forward_teacher(self, x: torch.Tensor) -> torch.Tensor:
        return self.teacher_head(self.teacher_backbone(x))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.student_backbone, self.teacher_backbone, m=momentum)
        update_momentum(self.student_head, self.teacher_head, m=momentum)


def backbone_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Plain CPU tensors (contiguous, fp32 floats): loadable with ``weights_only=True`` anywhere."""
    from trainer.models.checkpoint import unwrap

    return {
        k: (v.detach().float() if v.is_floating_point() else v.detach()).to("cpu").contiguous()
        for k, v in unwrap(module).state_dict().items()
    }
