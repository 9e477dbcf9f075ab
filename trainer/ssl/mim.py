"""Masked image modelling for CNN backbones (``ssl.method=mim``; SparK-style, dense).

Why it exists beside DINO: the PCB defect classes are small local anomalies (a cut trace, pads
without their part, a blob between two pins) on boards whose colour and layout vary a lot. DINO
learns what stays the same across two views of an image, which here is mostly the layout; its
features did not carry the defect class (docs/trainer.md). Reconstructing hidden patches from
their surroundings makes the encoder model the board's local structure instead (a trace goes
on, a body sits on its pads), which is what a defect breaks. lightly's MIM methods (MAE,
SimMIM) are ViT-only, so for CNNs this module does the few parts itself:

- a random ``mask_ratio`` of the ``patch`` x ``patch`` squares of each image is set to 0 after
  normalisation (the data set's mean colour) before the encoder sees it;
- the encoder's stages (for resnets ``layer1``..``layer4``, strides 4 to 32) are tapped with
  forward hooks, so the encoder stays the plain classification network without its head and
  its state dict keeps the names both tasks load (``backbone.pth``, as DINO's);
- a light U-Net decoder (1x1 laterals, nearest upsampling, one 3x3 conv per level, a
  pixel-shuffle head) predicts every pixel; the loss is MAE's: mean squared error against
  per-patch normalised pixels, on the masked patches only. The decoder is thrown away.

Dense convolutions see the mask's edges, which SparK avoids with sparse convolutions; that is
the one simplification, said so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.backbones import backbone_info

# the stage outputs the decoder reads, per backbone family (shallow to deep)
STAGES = {"resnet": ["layer1", "layer2", "layer3", "layer4"]}


def stage_names(backbone: str) -> list[str]:
    """The tapped stages of ``backbone``; other families are refused, naming the way out."""
    family = backbone_info(backbone).family
    if family not in STAGES:
        raise ValueError(
            f"ssl.method=mim supports the {', '.join(STAGES)} backbones (model.backbone "
            f"{backbone!r} is a {family}); use ssl.method=dino for it"
        )
    return STAGES[family]


def default_patch(image_size: int) -> int:
    """An 8 x 8 grid of mask squares (8 px at 64 px, 16 px at 128 px)."""
    return max(2, image_size // 8)


def _block(dim: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(dim, dim, 3, padding=1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True)
    )


class MaskedConvAE(nn.Module):
    """``loss = model(x)`` for a normalised batch ``x`` [B, 3, S, S]; ``model.backbone`` is the
    encoder whose weights are kept."""

    def __init__(
        self,
        backbone: nn.Module,
        stages: list[str],
        image_size: int,
        *,
        patch: int,
        mask_ratio: float,
        dim: int = 256,
    ):
        super().__init__()
        if image_size % patch:
            raise ValueError(
                f"ssl.mask_patch={patch} must divide dataset.image_size={image_size} (the mask is a grid)"
            )
        self.backbone = backbone
        self.stages, self.patch, self.mask_ratio = list(stages), patch, mask_ratio
        self._feats: dict[str, torch.Tensor] = {}
        for name in self.stages:
            backbone.get_submodule(name).register_forward_hook(self._keep(name))
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            backbone(torch.zeros(2, 3, image_size, image_size))
        backbone.train(was)
        shapes = [self._feats[n].shape for n in self.stages]
        self._feats.clear()
        self.first_stride = image_size // shapes[0][-1]
        self.lateral = nn.ModuleList(nn.Conv2d(s[1], dim, 1) for s in shapes)
        self.fuse = nn.ModuleList(_block(dim) for _ in shapes[:-1])
        r = self.first_stride
        self.head = nn.Sequential(nn.Conv2d(dim, 3 * r * r, 1), nn.PixelShuffle(r))

    def _keep(self, name: str):
        def hook(_m: nn.Module, _i, out: torch.Tensor) -> None:
            self._feats[name] = out

        return hook

    def random_mask(self, b: int, s: int, device: torch.device) -> torch.Tensor:
        """[B, g*g] booleans, exactly round(ratio * g*g) True per image (ranks of uniform noise)."""
        g = s // self.patch
        n = max(1, round(self.mask_ratio * g * g))
        return torch.rand(b, g * g, device=device).argsort(1).argsort(1) < n

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] -> [B, g*g, 3*p*p] (row-major squares, as :meth:`random_mask` numbers them)."""
        p = self.patch
        return F.unfold(x, kernel_size=p, stride=p).transpose(1, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, _, s, _ = x.shape
        if mask is None:
            mask = self.random_mask(b, s, x.device)
        g = s // self.patch
        m = mask.view(b, 1, g, g).to(x.dtype)
        keep = 1 - F.interpolate(m, scale_factor=self.patch, mode="nearest")
        self._feats.clear()
        self.backbone(x * keep)
        feats = [self._feats[n] for n in self.stages]
        self._feats.clear()
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, -1, -1):
            y = F.interpolate(y, size=feats[i].shape[-2:], mode="nearest") + self.lateral[i](feats[i])
            y = self.fuse[i](y)
        pred = self.head(y)
        if pred.shape[-2:] != x.shape[-2:]:
            pred = F.interpolate(pred, size=x.shape[-2:], mode="bilinear", align_corners=False)
        target = self.patches(x.float())
        mu, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
        target = (target - mu) / (var + 1e-6).sqrt()
        err = (self.patches(pred.float()) - target).pow(2).mean(-1)  # [B, g*g]
        w = mask.to(err.dtype)
        return (err * w).sum() / w.sum().clamp(min=1)
