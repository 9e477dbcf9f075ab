"""The ``ssl`` action: DINO or MIM pretraining of ``model.backbone`` on ``dataset.unlabeled_root``.

Writes ``<results_dir>/ssl/backbone.pth`` (the teacher's backbone, as DINO evaluates it: a flat
state dict of plain tensors, rewritten atomically after every epoch) and ``backbone.json``
(backbone name, image size, normalisation, images, epochs, final loss), plus the usual
``status.json`` progress per epoch (loss, images/s, lr, teacher momentum, feature spread).
Feed it to fine-tuning as ``model.pretrained_path`` (classification) or
``model.pretrained_backbone_path`` (detection).
"""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from trainer.runtime import ActionOutput, RunContext, amp_dtype, auto_workers, select_device
from trainer.ssl.data import MultiViewDataset, Uint8Image, scan_unlabeled
from trainer.ssl.device_views import DeviceMultiCrop
from trainer.ssl.dino import DINO, backbone_state, classification_name, headless_backbone
from trainer.ssl.spec import AugmentOn, SSLMethod, SSLSpec

log = logging.getLogger(__name__)

FORMAT = "edgeloop.ssl-backbone.v1"


def local_crop_size(cfg: SSLSpec, image_size: int) -> int:
    return cfg.local_crop_size or max(8, image_size // 2)


def _transform(cfg: SSLSpec, image_size: int, mean, std):
    from lightly.transforms import DINOTransform

    return DINOTransform(
        global_crop_size=image_size,
        global_crop_scale=cfg.global_crop_scale,
        local_crop_size=local_crop_size(cfg, image_size),
        local_crop_scale=cfg.local_crop_scale,
        n_local_views=cfg.local_views,
        vf_prob=cfg.vflip,
        cj_prob=cfg.color_jitter,
        solarization_prob=cfg.solarization,
        normalize={"mean": list(mean), "std": list(std)},
    )


def on_device(cfg: SSLSpec, device: torch.device) -> bool:
    """Whether the views are made on the training device (``ssl.augment_on``)."""
    if cfg.augment_on == AugmentOn.auto:
        return device.type == "cuda"
    return cfg.augment_on == AugmentOn.device


def _device_views(cfg: SSLSpec, image_size: int, mean, std) -> DeviceMultiCrop:
    """The same views as :func:`_transform`, made on the device (lightly's DINO defaults)."""
    return DeviceMultiCrop(
        global_size=image_size,
        local_size=local_crop_size(cfg, image_size),
        local_views=cfg.local_views,
        global_scale=cfg.global_crop_scale,
        local_scale=cfg.local_crop_scale,
        mean=list(mean),
        std=list(std),
        vflip=cfg.vflip,
        color_jitter=cfg.color_jitter,
        solarization=cfg.solarization,
    )


def _schedule(cfg: SSLSpec, step: int, total: int, warm: int) -> float:
    """Linear warmup, then cosine from ``lr`` to ``min_lr`` (lightly's cosine_schedule)."""
    from lightly.utils.scheduler import cosine_schedule

    if warm and step < warm:
        return cfg.lr * (step + 1) / warm
    return float(cosine_schedule(min(step - warm, total - warm), max(1, total - warm), cfg.lr, cfg.min_lr))


def _teacher_temp(cfg: SSLSpec, epoch: int) -> float:
    w = cfg.warmup_teacher_temp_epochs
    if w and epoch < w:
        return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * epoch / w
    return cfg.teacher_temp


def _save(state: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".pth.tmp")
    torch.save(state, tmp)
    tmp.replace(path)  # atomic: a kill mid-save leaves the previous epoch's backbone


class OneView:
    """The mim method's CPU view (the loader workers): crop by ``ssl.global_crop_scale``, flips,
    normalisation; a list of one tensor, as the multi-crop transforms return lists."""

    def __init__(self, cfg: SSLSpec, image_size: int, mean, std):
        from torchvision import transforms as T

        ops: list = [
            T.RandomResizedCrop(image_size, scale=tuple(cfg.global_crop_scale)),
            T.RandomHorizontalFlip(),
        ]
        if cfg.vflip:
            ops.append(T.RandomVerticalFlip(cfg.vflip))
        self.tf = T.Compose([*ops, T.ToTensor(), T.Normalize(list(mean), list(std))])

    def __call__(self, image) -> list[torch.Tensor]:
        return [self.tf(image)]


class DeviceOneView:
    """:class:`OneView` on the device, for a uint8 batch (trainer.ssl.device_views' crop)."""

    def __init__(self, cfg: SSLSpec, image_size: int, mean, std):
        self.cfg, self.size, self.mean, self.std = cfg, image_size, list(mean), list(std)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> list[torch.Tensor]:
        from trainer.ssl.device_views import resized_crop

        x = resized_crop(images.float().div_(255), self.size, self.cfg.global_crop_scale, 0.5, self.cfg.vflip)
        mean = x.new_tensor(self.mean).view(1, 3, 1, 1)
        std = x.new_tensor(self.std).view(1, 3, 1, 1)
        return [(x - mean) / std]


class DinoStep:
    """One DINO step: EMA teacher on the global views, student on all (lightly's loss, head,
    schedules); the teacher's backbone is the one kept."""

    def __init__(self, cfg: SSLSpec, net: torch.nn.Module, feat_dim: int, device: torch.device):
        from lightly.loss import DINOLoss

        self.cfg = cfg
        self.model = DINO(
            net,
            feat_dim,
            hidden=cfg.hidden_dim,
            bottleneck=cfg.bottleneck_dim,
            out=cfg.output_dim,
            freeze_last=cfg.freeze_last_layer_epochs,
        ).to(device)
        self.criterion = DINOLoss(
            output_dim=cfg.output_dim, student_temp=cfg.student_temp, teacher_temp=cfg.teacher_temp
        ).to(device)
        self.momentum = 0.0

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.teacher_backbone

    def before_step(self, step: int, total: int) -> None:
        from lightly.utils.scheduler import cosine_schedule

        self.momentum = float(cosine_schedule(step, max(1, total), self.cfg.momentum_start, 1.0))
        self.model.update_teacher(self.momentum)

    def loss(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        glob = torch.cat(views[:2])
        t_out = self.model.forward_teacher(glob).chunk(2)
        s_out = list(self.model(glob).chunk(2))
        if len(views) > 2:
            s_out += list(self.model(torch.cat(views[2:])).chunk(len(views) - 2))
        return self.criterion(list(t_out), s_out, teacher_temp=_teacher_temp(self.cfg, epoch))

    def after_backward(self, epoch: int) -> None:
        self.model.student_head.cancel_last_layer_gradients(current_epoch=epoch)

    def record(self) -> dict[str, Any]:
        return {"teacher_momentum": round(self.momentum, 6)}


class MimStep:
    """One masked-image-modelling step (trainer.ssl.mim); the encoder is the backbone kept."""

    def __init__(
        self, cfg: SSLSpec, net: torch.nn.Module, backbone: str, image_size: int, device: torch.device
    ):
        from trainer.ssl.mim import MaskedConvAE, default_patch, stage_names

        self.model = MaskedConvAE(
            net,
            stage_names(backbone),
            image_size,
            patch=cfg.mask_patch or default_patch(image_size),
            mask_ratio=cfg.mask_ratio,
            dim=cfg.decoder_dim,
        ).to(device)

    @property
    def backbone(self) -> torch.nn.Module:
        return self.model.backbone

    def before_step(self, step: int, total: int) -> None:
        pass

    def loss(self, views: list[torch.Tensor], epoch: int) -> torch.Tensor:
        return self.model(views[0])

    def after_backward(self, epoch: int) -> None:
        pass

    def record(self) -> dict[str, Any]:
        return {}


def run_ssl(spec: Any, ctx: RunContext, *, backbone: str, init_path: str | None = None) -> ActionOutput:
    """Shared by every task's ssl action; ``backbone`` is the task's ``model.backbone``."""
    cfg: SSLSpec = spec.ssl
    mim = cfg.method == SSLMethod.mim
    if mim:
        from trainer.ssl.mim import stage_names

        stage_names(classification_name(backbone))  # refused before the folder is read
    torch.manual_seed(spec.seed)
    ds = spec.dataset
    device = select_device(spec.train.device, ctx.local_rank)
    data = scan_unlabeled(ds.unlabeled_root)
    if data.corrupt:
        ctx.status.progress(
            corrupt_images=len(data.corrupt), corrupt_files=[str(p) for p in data.corrupt[:20]]
        )
    n = len(data.paths)
    bs = min(cfg.batch_size, n)
    # the detection spec leaves the loader's workers unset (null): the same rule as its training
    nw = (
        spec.train.num_workers if spec.train.num_workers is not None else auto_workers(device, ctx.world_size)
    )
    gpu_views: Any = None
    if on_device(cfg, device):
        gpu_views = (DeviceOneView if mim else _device_views)(cfg, ds.image_size, ds.mean, ds.std)
    per_image = (
        Uint8Image(ds.image_size)
        if gpu_views
        else (OneView if mim else _transform)(cfg, ds.image_size, ds.mean, ds.std)
    )
    loader = DataLoader(
        MultiViewDataset(data.paths, per_image),
        batch_size=bs,
        shuffle=True,
        num_workers=nw,
        pin_memory=device.type == "cuda",
        drop_last=n > bs,
        persistent_workers=nw > 0,
    )
    name = classification_name(backbone)
    local = local_crop_size(cfg, ds.image_size)
    net, feat_dim = headless_backbone(
        name, ds.image_size, init_path, min_size=local if (cfg.local_views and not mim) else None
    )
    method = MimStep(cfg, net, name, ds.image_size, device) if mim else DinoStep(cfg, net, feat_dim, device)
    model = method.model
    fmt = (
        torch.channels_last
        if (device.type == "cuda" and spec.train.channels_last)
        else torch.contiguous_format
    )
    model = model.to(memory_format=fmt)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    dtype = amp_dtype(device, spec.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
    autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext

    spe = len(loader) if not cfg.max_steps_per_epoch else min(cfg.max_steps_per_epoch, len(loader))
    horizon = cfg.epochs
    out_path = ctx.out_dir / "backbone.pth"
    history: list[dict[str, Any]] = []
    started = time.perf_counter()
    log.info(
        "ssl %s on %d images (%s, %d features), %d steps/epoch, views made on %s",
        cfg.method.value,
        n,
        name,
        feat_dim,
        spe,
        device.type if gpu_views else "the loader workers",
    )
    epoch = 0
    for epoch in range(cfg.epochs):
        if epoch >= horizon:
            break
        model.train()
        # warmup never longer than the (possibly time-shortened) schedule
        total, warm = horizon * spe, min(cfg.warmup_epochs, max(0, horizon - 1)) * spe
        loss_sum = torch.zeros((), device=device)
        seen, steps, t0 = 0, 0, time.perf_counter()
        lr = 0.0
        feat_std = float("nan")
        t_first = t0
        for i, views in enumerate(loader):
            if i >= spe:
                break
            if i == 0:
                t_first = time.perf_counter()  # the first batch waits for the workers to start
            step = epoch * spe + i
            lr = _schedule(cfg, step, total, warm)
            for g in opt.param_groups:
                g["lr"] = lr
            method.before_step(step, total)
            if gpu_views is not None:
                views = gpu_views(views.to(device, non_blocking=True))
            views = [v.to(device, non_blocking=True, memory_format=fmt) for v in views]
            b = views[0].shape[0]
            with autocast():
                loss = method.loss(views, epoch)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            method.after_backward(epoch)
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach().float()
            seen += b
            steps += 1
            if i == spe - 1:
                with torch.no_grad():  # collapse check: spread of the normalised teacher features
                    f = torch.nn.functional.normalize(method.backbone(views[0]).float(), dim=1)
                    feat_std = float(f.std(0).mean())
        elapsed = time.perf_counter() - t0
        mean_loss = float(loss_sum) / max(1, steps)
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"ssl loss is {mean_loss} in epoch {epoch + 1}; lower ssl.lr")
        if cfg.time_limit_s:
            # the horizon is re-estimated after every epoch from the last epoch's time (the first
            # epoch's steady per-step time, without the workers' start-up): a first epoch slowed
            # by warm-up (cuDNN autotuning, allocator growth) once cut a 320 s budget to 131 s
            now = time.perf_counter()
            if epoch == 0:
                per_epoch = (now - t_first) * spe / max(1, steps - 1) if steps > 1 else now - started
            else:
                per_epoch = now - t0
            fit = epoch + 1 + int(max(0.0, cfg.time_limit_s - (now - started)) // max(per_epoch, 1e-6))
            new_horizon = max(epoch + 1, min(cfg.epochs, fit))
            if epoch == 0 and new_horizon < cfg.epochs:
                log.info("ssl.time_limit_s=%s: schedule set to %d epochs", cfg.time_limit_s, new_horizon)
            horizon = new_horizon
        record = {
            "epoch": epoch + 1,
            "ssl_loss": round(mean_loss, 5),
            "images_per_s": round(seen / max(elapsed, 1e-9), 1),
            "lr": lr,
            **method.record(),
            "feature_std": round(feat_std, 5),
            "horizon_epochs": horizon,
        }
        history.append(record)
        log.info("ssl epoch %d/%d %s", epoch + 1, horizon, record)
        if ctx.is_main:
            ctx.status.progress(**record)
            _save(backbone_state(method.backbone), out_path)
    epochs_done = len(history)
    meta = {
        "format": FORMAT,
        "method": cfg.method.value,
        "backbone": backbone,
        "image_size": ds.image_size,
        "mean": list(ds.mean),
        "std": list(ds.std),
        "unlabeled_root": str(ds.unlabeled_root),
        "num_images": n,
        "epochs": epochs_done,
        "init_path": init_path,
        "history": history,
    }
    if ctx.is_main:
        (ctx.out_dir / "backbone.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    last = history[-1] if history else {}
    metrics = {
        "method": cfg.method.value,
        "backbone": backbone,
        "num_images": n,
        "corrupt_images": len(data.corrupt),
        "epochs": epochs_done,
        "ssl_loss": last.get("ssl_loss"),
        "images_per_s": last.get("images_per_s"),
        "feature_std": last.get("feature_std"),
        "feature_dim": feat_dim,
        "views_on": device.type if gpu_views else "loader",
    }
    return ActionOutput(metrics=metrics, model_path=out_path)
