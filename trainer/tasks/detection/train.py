"""train, distill, evaluate and inference for detection, on the shared training loop
(:func:`trainer.engine.fit`): this module supplies the loss (transformers' RT-DETR loss, plus the
distillation terms) and the mAP validation; the loop, AMP, DDP, resume and status are the
trainer's."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from trainer.runtime import ActionOutput, RunContext, select_device
from trainer.tasks.detection.data import CocoDetection, CocoSplit, collate, load_coco_split, train_transforms
from trainer.tasks.detection.metrics import coco_map, decode, to_coco_results
from trainer.tasks.detection.model import (
    DetectorConfig,
    build_detector,
    load_detector,
    load_pretrained_backbone,
    save_detector,
)
from trainer.tasks.detection.spec import DetectionSpec

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"}


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def open_split(spec: DetectionSpec, split: str) -> CocoSplit:
    return load_coco_split(
        Path(spec.dataset.root) / split,
        bad_boxes=spec.dataset.bad_boxes.value,
        corrupt_images=spec.dataset.corrupt_images.value,
    )


def loader(spec: DetectionSpec, split: CocoSplit, *, train: bool, batch_size: int, distributed: bool = False):
    tf = train_transforms(spec.dataset.image_size, spec.dataset.augmentation) if train else None
    ds = CocoDetection(split, spec.dataset.image_size, spec.dataset.mean, spec.dataset.std, tf, train=train)
    sampler = None
    if distributed:
        sampler = torch.utils.data.distributed.DistributedSampler(
            ds, shuffle=True, seed=spec.seed, drop_last=True
        )
    workers = spec.train.num_workers
    return torch.utils.data.DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        drop_last=train and len(ds) > batch_size,
        persistent_workers=workers > 0 and train,
        pin_memory=torch.cuda.is_available(),
    )


def detector_config(spec: DetectionSpec, labels: list[str], backbone: str | None = None) -> DetectorConfig:
    m = spec.model
    return DetectorConfig(
        backbone=backbone or m.backbone,
        architecture=m.architecture.value,
        num_labels=len(labels),
        num_queries=m.num_queries,
        d_model=m.d_model,
        encoder_ffn_dim=m.encoder_ffn_dim,
        decoder_ffn_dim=m.decoder_ffn_dim,
        decoder_layers=m.decoder_layers,
        attention_heads=m.attention_heads,
        num_denoising=m.num_denoising,
        image_size=spec.dataset.image_size,
        id2label=dict(enumerate(labels)),
    )


def make_model(spec: DetectionSpec, labels: list[str]) -> nn.Module:
    if spec.model.pretrained_path:
        loaded = load_detector(spec.model.pretrained_path)
        if loaded.labels != labels:
            raise ValueError(
                f"model.pretrained_path has labels {loaded.labels}, the data set {labels}: start from "
                "model.pretrained_backbone_path instead when the classes differ"
            )
        return loaded.model
    model = build_detector(detector_config(spec, labels))
    if spec.model.pretrained_backbone_path:
        load_pretrained_backbone(model, spec.model.pretrained_backbone_path)
    return model


def _targets_to(
    targets: list[dict[str, torch.Tensor]], device: torch.device
) -> list[dict[str, torch.Tensor]]:
    return [{"class_labels": t["class_labels"].to(device), "boxes": t["boxes"].to(device)} for t in targets]


def detection_loss(
    model: nn.Module, images: torch.Tensor, targets: list[dict[str, torch.Tensor]]
) -> torch.Tensor:
    out = model(pixel_values=images, labels=_targets_to(targets, images.device))
    return out.loss


# ------------------------------------------------------------------ prediction
@torch.no_grad()
def predict_torch(
    model: nn.Module, dl, device: torch.device, *, max_detections: int, conf_threshold: float = 0.0
) -> tuple[list[dict[str, np.ndarray]], list[int]]:
    model.eval()
    dets, ids = [], []
    for images, targets in dl:
        out = model(pixel_values=images.to(device))
        sizes = np.stack([t["orig_size"].numpy() for t in targets])
        dets += decode(
            out.logits.float().cpu().numpy(),
            out.pred_boxes.float().cpu().numpy(),
            sizes,
            max_detections=max_detections,
            conf_threshold=conf_threshold,
        )
        ids += [int(t["image_id"]) for t in targets]
    return dets, ids


def evaluate_model(
    model: nn.Module,
    spec: DetectionSpec,
    split: CocoSplit,
    device: torch.device,
    *,
    batch_size: int,
    max_detections: int = 100,
    conf_threshold: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    dl = loader(spec, split, train=False, batch_size=batch_size)
    dets, ids = predict_torch(model, dl, device, max_detections=max_detections, conf_threshold=conf_threshold)
    results = to_coco_results(dets, ids, split.label_to_cat)
    return coco_map(split.coco, results), results


def _validator(spec: DetectionSpec, val: CocoSplit, device: torch.device):
    counter = {"epoch": 0}

    def validate(model: nn.Module) -> dict[str, float]:
        counter["epoch"] += 1
        if counter["epoch"] % spec.train.val_interval and counter["epoch"] != spec.train.epochs:
            return {}
        metrics, _ = evaluate_model(model, spec, val, device, batch_size=spec.evaluate.batch_size)
        model.train()
        return {"val_map": metrics["map"], "val_map50": metrics["map50"]}

    return validate


class TimeLimitReached(Exception):
    """train.time_limit_s ran out (raised inside the loss, caught by :func:`_fit`)."""


def _time_limited(loss_fn, limit_s: float):
    if not limit_s:
        return loss_fn
    import time

    deadline = time.monotonic() + limit_s

    def wrapped(model, images, targets):
        if time.monotonic() > deadline:
            raise TimeLimitReached
        return loss_fn(model, images, targets)

    return wrapped


def _fit(
    spec: DetectionSpec,
    ctx: RunContext,
    model: nn.Module,
    loss_fn,
    *,
    lineage: dict[str, Any],
    extra_params=(),
):
    from trainer.engine import fit as _run_fit

    seed_all(spec.seed)
    train_split, val_split = open_split(spec, "train"), open_split(spec, "val")
    labels = train_split.labels
    if val_split.labels != labels:
        raise ValueError(f"train and val categories differ: {labels} vs {val_split.labels}")
    device = select_device(spec.train.device, ctx.local_rank)
    distributed = ctx.world_size > 1
    if distributed and spec.train.time_limit_s:
        raise ValueError("train.time_limit_s works on one process only (ranks would stop at different steps)")
    dl = loader(spec, train_split, train=True, batch_size=spec.train.batch_size, distributed=distributed)
    best_path = ctx.out_dir / "model.pth"
    last_path = ctx.out_dir / "last.pth"
    common = {
        "labels": labels,
        "mean": list(spec.dataset.mean),
        "std": list(spec.dataset.std),
        "lineage": lineage,
        "label_to_cat": {str(k): int(v) for k, v in train_split.label_to_cat.items()},
    }

    def save(module: nn.Module, state, resume_state: dict[str, Any], is_best: bool) -> None:
        metrics = state.history[-1] if state.history else {}
        save_detector(module, last_path, metrics=metrics, **common, **resume_state)
        if is_best:
            save_detector(module, best_path, metrics=metrics, **common)

    resume = None
    if spec.train.resume:
        rpath = Path(spec.train.resume) if isinstance(spec.train.resume, str) else last_path
        if rpath.is_file():
            loaded = load_detector(rpath)
            model.load_state_dict(loaded.model.state_dict())
            resume = {
                k: loaded.payload[k]
                for k in ("epoch", "optimizer", "scheduler", "scaler", "best_metric", "history")
                if k in loaded.payload
            }
    loss_fn = _time_limited(loss_fn, spec.train.time_limit_s)
    try:
        state = _run_fit(
            model,
            cfg=spec.train,
            device=device,
            train_loader=dl,
            train_sampler=dl.sampler if distributed else None,
            loss_fn=loss_fn,
            validate=_validator(spec, val_split, device),
            ctx=ctx,
            save=save,
            extra_params=extra_params,
            resume=resume,
            monitor="val_map",
        )
        history, stopped = state.history, False
    except TimeLimitReached:
        if not best_path.is_file():
            raise RuntimeError(
                f"train.time_limit_s={spec.train.time_limit_s} ran out before the first epoch ended"
            ) from None
        history, stopped = load_detector(last_path).payload.get("history", []), True
        log.warning("train.time_limit_s reached after %d epochs; keeping the best of those", len(history))
    best = max((h.get("val_map", -1.0) for h in history), default=-1.0)
    metrics = {
        "val_map": best,
        "epochs": len(history),
        "history": history,
        "train_images": len(train_split.images),
    }
    metrics["stopped_by_time_limit"] = stopped
    metrics["world_size"] = ctx.world_size
    return ActionOutput(metrics=metrics, model_path=best_path)


def train_action(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Train an RT-DETR detector on <dataset.root>/train, best val mAP kept."""
    seed_all(spec.seed)
    labels = open_split(spec, "train").labels
    model = make_model(spec, labels)
    lineage = {"history": ["train"], "backbone": spec.model.backbone}
    return _fit(spec, ctx, model, detection_loss, lineage=lineage)


def distill_action(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Single-stage distillation: teacher -> student (features + matched-query logits/boxes)."""
    from trainer.tasks.detection.distill import DetectionDistiller

    if ctx.world_size > 1:
        raise ValueError("distill runs on one process (train.num_gpus=1): its projections are outside DDP")
    seed_all(spec.seed)
    labels = open_split(spec, "train").labels
    teacher = load_detector(spec.distill.teacher.checkpoint)  # type: ignore[arg-type]
    if spec.distill.teacher.backbone and spec.distill.teacher.backbone != teacher.config.backbone:
        raise ValueError(
            f"distill.teacher.backbone={spec.distill.teacher.backbone!r} but the checkpoint is a "
            f"{teacher.config.backbone!r} detector"
        )
    if teacher.labels != labels:
        raise ValueError(f"teacher labels {teacher.labels} differ from the data set's {labels}")
    if spec.distill.student_checkpoint:
        student = load_detector(spec.distill.student_checkpoint).model
    else:
        student = make_model(spec, labels)
    device = select_device(spec.train.device, ctx.local_rank)
    distiller = DetectionDistiller(teacher.model, student, spec.distill, device)
    lineage = {
        "history": ["distill"],
        "teacher": f"{teacher.config.backbone}:{spec.distill.teacher.checkpoint}",
        "backbone": student.detector_config.backbone,
    }
    out = _fit(
        spec, ctx, student, distiller.loss, lineage=lineage, extra_params=distiller.projections.parameters()
    )
    out.metrics["teacher_backbone"] = teacher.config.backbone
    return out


# ------------------------------------------------------------------ evaluate / inference
def evaluate_action(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """COCO mAP@[.5:.95], mAP@.5 and per-class AP of a .pth or .onnx model on a split."""
    ckpt = Path(spec.evaluate.checkpoint or ctx.default_checkpoint("train"))
    split = open_split(spec, spec.evaluate.split)
    cfg = spec.evaluate
    if ckpt.suffix == ".onnx":
        from trainer.tasks.detection.export import evaluate_onnx

        metrics, results = evaluate_onnx(
            ckpt,
            spec,
            split,
            batch_size=cfg.batch_size,
            max_detections=cfg.max_detections,
            conf_threshold=cfg.conf_threshold,
        )
    else:
        loaded = load_detector(ckpt)
        if loaded.labels != split.labels:
            raise ValueError(f"model labels {loaded.labels} differ from the split's {split.labels}")
        device = select_device(spec.train.device)
        loaded.model.to(device)
        metrics, results = evaluate_model(
            loaded.model,
            spec,
            split,
            device,
            batch_size=cfg.batch_size,
            max_detections=cfg.max_detections,
            conf_threshold=cfg.conf_threshold,
        )
    (ctx.out_dir / "detections.json").write_text(json.dumps(results), encoding="utf-8")
    metrics.update(
        {
            "split": cfg.split,
            "checkpoint": str(ckpt),
            "images": len(split.images),
            "data_report": {k: v for k, v in split.report.items() if k != "unreadable"},
        }
    )
    log.info("mAP %.4f  mAP50 %.4f", metrics["map"], metrics["map50"])
    return ActionOutput(metrics=metrics)


def draw_detections(image, det: dict[str, np.ndarray], labels: list[str]):
    from PIL import ImageDraw

    image = image.convert("RGB")
    draw = ImageDraw.Draw(image)
    palette = [(255, 0, 255), (0, 255, 255), (255, 255, 0), (255, 80, 80), (80, 255, 80), (80, 160, 255)]
    for s, lab, box in zip(det["scores"], det["labels"], det["boxes"], strict=True):
        colour = palette[int(lab) % len(palette)]
        draw.rectangle([float(v) for v in box], outline=colour, width=1)
        draw.text((float(box[0]), max(0.0, float(box[1]) - 10)), f"{labels[int(lab)]} {s:.2f}", fill=colour)
    return image


def inference_action(spec: DetectionSpec, ctx: RunContext) -> ActionOutput:
    """Detect on a folder of images: COCO-results JSON (+ image list) and annotated images."""
    from PIL import Image

    ckpt = Path(spec.inference.checkpoint or ctx.default_checkpoint("train"))
    folder = Path(spec.inference.input_dir) if spec.inference.input_dir else Path(spec.dataset.root) / "test"
    paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"no images in {folder}")
    cfg = spec.inference
    if ckpt.suffix == ".onnx":
        from trainer.tasks.detection.export import OnnxDetector

        runner = OnnxDetector(ckpt)
        labels, size, mean, std = runner.labels, runner.image_size, runner.mean, runner.std
        label_to_cat = runner.label_to_cat
    else:
        loaded = load_detector(ckpt)
        model = loaded.model.eval()
        labels, size, mean, std = loaded.labels, loaded.config.image_size, loaded.mean, loaded.std
        label_to_cat = {int(k): int(v) for k, v in (loaded.payload.get("label_to_cat") or {}).items()} or {
            i: i + 1 for i in range(len(labels))
        }
    images_out = ctx.out_dir / "annotated"
    images_out.mkdir(exist_ok=True)
    results, index, unreadable = [], [], []
    for start in range(0, len(paths), cfg.batch_size):
        chunk, arrays, sizes = [], [], []
        for p in paths[start : start + cfg.batch_size]:
            try:
                with Image.open(p) as im:
                    im = im.convert("RGB")
            except Exception as exc:
                unreadable.append(f"{p}: {type(exc).__name__}: {exc}")
                continue
            chunk.append((p, im))
            arr = np.asarray(im.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
            arrays.append(
                ((arr - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)
            )
            sizes.append((im.height, im.width))
        if not chunk:
            continue
        batch = np.stack(arrays).astype(np.float32)
        if ckpt.suffix == ".onnx":
            logits, boxes = runner.run(batch)
        else:
            with torch.no_grad():
                out = model(pixel_values=torch.from_numpy(batch))
            logits, boxes = out.logits.numpy(), out.pred_boxes.numpy()
        dets = decode(
            logits,
            boxes,
            np.asarray(sizes),
            max_detections=cfg.max_detections,
            conf_threshold=cfg.conf_threshold,
        )
        for (p, im), det in zip(chunk, dets, strict=True):
            image_id = len(index) + 1
            index.append(
                {
                    "id": image_id,
                    "file_name": str(p.relative_to(folder)),
                    "width": im.width,
                    "height": im.height,
                }
            )
            results += to_coco_results([det], [image_id], label_to_cat)
            if len(index) <= cfg.annotate:
                draw_detections(im, det, labels).save(images_out / (p.stem + ".png"))
    if unreadable:
        log.warning("skipped %d unreadable images:\n  %s", len(unreadable), "\n  ".join(unreadable[:20]))
    (ctx.out_dir / "detections.json").write_text(json.dumps(results), encoding="utf-8")
    (ctx.out_dir / "images.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    metrics = {
        "images": len(index),
        "detections": len(results),
        "unreadable": len(unreadable),
        "conf_threshold": cfg.conf_threshold,
    }
    return ActionOutput(metrics=metrics)
