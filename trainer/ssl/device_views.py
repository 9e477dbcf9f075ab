"""DINO's multi-crop views built on the device from a batch of uint8 images.

lightly's ``DINOTransform`` makes the views one image at a time with PIL in the loader workers:
at 64 px on the H200 that bound pretraining at ~1000 images/s with the GPU mostly idle (each
image becomes 2 global + 6 local crops, each colour-jittered, blurred, solarised). Here the
loader only decodes each image to a fixed-size uint8 tensor, and every view of the whole batch
is made by a few batched tensor ops on the GPU, with the same augmentations and probabilities
as lightly's DINO views (random resized crop with flips, colour jitter, grayscale, Gaussian
blur, solarisation on the second global view, normalisation); each image draws its own random
parameters. Two approximations, said so: a crop whose sampled size does not fit is clamped to
the image (torchvision retries, then falls back to a centre crop), and the hue shift is a
rotation of the chroma plane in YIQ space rather than a shift in HSV.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, as torchvision's rgb_to_grayscale
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = torch.tensor(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64
)
_YIQ_TO_RGB = torch.linalg.inv(_RGB_TO_YIQ)


@dataclass(frozen=True)
class ViewParams:
    """One kind of view (lightly's ``DINOViewTransform`` arguments)."""

    size: int
    scale: tuple[float, float]
    blur_p: float
    solarize_p: float


class DeviceMultiCrop:
    """``views = DeviceMultiCrop(...)(uint8 batch [B, 3, H, W])``: 2 global views and
    ``local_views`` local ones, float, normalised, each ``[B, 3, size, size]`` on the batch's
    device, in the order lightly's transform returns them."""

    def __init__(
        self,
        *,
        global_size: int,
        local_size: int,
        local_views: int,
        global_scale: tuple[float, float],
        local_scale: tuple[float, float],
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        hflip: float = 0.5,
        vflip: float = 0.0,
        color_jitter: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.1,
        grayscale: float = 0.2,
        solarization: float = 0.2,
        sigmas: tuple[float, float] = (0.1, 2.0),
    ):
        self.views = [
            ViewParams(global_size, tuple(global_scale), 1.0, 0.0),  # type: ignore[arg-type]
            ViewParams(global_size, tuple(global_scale), 0.1, solarization),  # type: ignore[arg-type]
        ] + [ViewParams(local_size, tuple(local_scale), 0.5, 0.0) for _ in range(local_views)]  # type: ignore[arg-type]
        self.mean, self.std = list(mean), list(std)
        self.hflip, self.vflip = hflip, vflip
        self.cj_p, self.cj = color_jitter, (brightness, contrast, saturation, hue)
        self.gray_p, self.sigmas = grayscale, sigmas

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch [B, 3, H, W], got {images.dtype} {tuple(images.shape)}")
        x = images.float().div_(255)
        return [self._view(x, v) for v in self.views]

    def _view(self, x: torch.Tensor, v: ViewParams) -> torch.Tensor:
        out = resized_crop(x, v.size, v.scale, self.hflip, self.vflip)
        out = color_jitter(out, self.cj_p, *self.cj)
        out = random_grayscale(out, self.gray_p)
        out = gaussian_blur(out, v.blur_p, self.sigmas)
        out = solarize(out, v.solarize_p)
        mean = out.new_tensor(self.mean).view(1, 3, 1, 1)
        std = out.new_tensor(self.std).view(1, 3, 1, 1)
        return (out - mean) / std


def _chance(n: int, p: float, device: torch.device) -> torch.Tensor:
    return torch.rand(n, device=device) < p


def _uniform(n: int, lo: float, hi: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(lo, hi)


def resized_crop(
    x: torch.Tensor, size: int, scale: tuple[float, float], hflip: float, vflip: float
) -> torch.Tensor:
    """RandomResizedCrop (area fraction in ``scale``, aspect ratio 3/4..4/3) + flips, one
    bilinear resample per image through an affine sampling grid."""
    b, dev = x.shape[0], x.device
    area = _uniform(b, scale[0], scale[1], dev)
    log_r = _uniform(b, math.log(3 / 4), math.log(4 / 3), dev)
    r = log_r.exp()
    w = (area * r).sqrt().clamp(max=1.0)  # fractions of the image's width / height
    h = (area / r).sqrt().clamp(max=1.0)
    cx = w / 2 + torch.rand(b, device=dev) * (1 - w)
    cy = h / 2 + torch.rand(b, device=dev) * (1 - h)
    fx = torch.where(_chance(b, hflip, dev), -1.0, 1.0)
    fy = torch.where(_chance(b, vflip, dev), -1.0, 1.0)
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0], theta[:, 0, 2] = w * fx, 2 * cx - 1
    theta[:, 1, 1], theta[:, 1, 2] = h * fy, 2 * cy - 1
    grid = F.affine_grid(theta, [b, 3, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def color_jitter(
    x: torch.Tensor, p: float, brightness: float, contrast: float, saturation: float, hue: float
) -> torch.Tensor:
    """With probability ``p`` per image: brightness, contrast, saturation and hue factors drawn
    as torchvision's ColorJitter draws them (fixed order), clamped to [0, 1]."""
    b, dev = x.shape[0], x.device
    on = _chance(b, p, dev).view(b, 1, 1, 1)
    one = torch.ones(b, device=dev)
    bf = torch.where(on.view(b), _uniform(b, max(0.0, 1 - brightness), 1 + brightness, dev), one)
    cf = torch.where(on.view(b), _uniform(b, max(0.0, 1 - contrast), 1 + contrast, dev), one)
    sf = torch.where(on.view(b), _uniform(b, max(0.0, 1 - saturation), 1 + saturation, dev), one)
    hf = torch.where(on.view(b), _uniform(b, -hue, hue, dev), torch.zeros(b, device=dev))
    y = (x * bf.view(b, 1, 1, 1)).clamp(0, 1)
    m = _gray(y).mean((2, 3), keepdim=True)
    y = ((y - m) * cf.view(b, 1, 1, 1) + m).clamp(0, 1)
    g = _gray(y)
    y = ((y - g) * sf.view(b, 1, 1, 1) + g).clamp(0, 1)
    # hue: rotate the (I, Q) chroma plane by 2 pi x factor
    to_yiq, to_rgb = _RGB_TO_YIQ.to(dev, torch.float32), _YIQ_TO_RGB.to(dev, torch.float32)
    ang = 2 * math.pi * hf
    cos, sin = ang.cos(), ang.sin()
    rot = torch.zeros(b, 3, 3, device=dev)
    rot[:, 0, 0] = 1
    rot[:, 1, 1], rot[:, 1, 2], rot[:, 2, 1], rot[:, 2, 2] = cos, -sin, sin, cos
    mat = to_rgb @ rot @ to_yiq  # [B, 3, 3]
    y = torch.einsum("bij,bjhw->bihw", mat, y).clamp(0, 1)
    return torch.where(on, y, x)


def random_grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    on = _chance(x.shape[0], p, x.device).view(-1, 1, 1, 1)
    return torch.where(on, _gray(x).expand_as(x), x)


def gaussian_blur(x: torch.Tensor, p: float, sigmas: tuple[float, float]) -> torch.Tensor:
    """With probability ``p`` per image, a Gaussian blur of sigma ~ U(sigmas) pixels (PIL's
    radius, as lightly uses it); separable, one grouped convolution per axis for the batch."""
    b, c, hgt, wid = x.shape
    if p <= 0:
        return x
    dev = x.device
    sigma = torch.where(
        _chance(b, p, dev), _uniform(b, sigmas[0], sigmas[1], dev), torch.zeros(b, device=dev)
    )
    radius = min(int(math.ceil(3 * sigmas[1])), (min(hgt, wid) - 1) // 2)
    if radius < 1:
        return x
    t = torch.arange(-radius, radius + 1, device=dev, dtype=x.dtype)
    k = torch.exp(-(t[None] ** 2) / (2 * sigma.clamp(min=1e-3)[:, None] ** 2))
    k = torch.where(sigma[:, None] > 0, k, (t[None] == 0).to(x.dtype))  # sigma 0: identity
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # [B*C, K]
    y = x.reshape(1, b * c, hgt, wid)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), k[:, None, None, :], groups=b * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, hgt, wid)


def solarize(x: torch.Tensor, p: float, threshold: float = 0.5) -> torch.Tensor:
    if p <= 0:
        return x
    on = _chance(x.shape[0], p, x.device).view(-1, 1, 1, 1)
    return torch.where(on & (x >= threshold), 1 - x, x)
