"""Pieces the classification actions share: loaders, models from spec or checkpoint, predictors,
metrics and the confusion-matrix plot."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Sampler

from trainer.datasets.folder import (
    ImageListDataset,
    Samples,
    class_names,
    eval_transform,
    scan_split,
    train_transform,
)
from trainer.models.backbones import build_model, load_pretrained
from trainer.models.checkpoint import Checkpoint, load_checkpoint
from trainer.runtime import RunContext
from trainer.tasks.classification.spec import ClassificationSpec

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def loader(
    samples: Samples,
    transform,
    batch_size: int,
    *,
    shuffle: bool,
    num_workers: int,
    sampler=None,
    drop_last: bool = False,
) -> DataLoader:
    ds = ImageListDataset(samples.items, transform)
    return DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        drop_last=drop_last and len(ds) > batch_size,
        persistent_workers=num_workers > 0,
    )


@dataclass
class TrainData:
    classes: list[str]
    train: DataLoader
    val: DataLoader
    sampler: Any
    corrupt: int


def train_data(spec: ClassificationSpec, ctx: RunContext, classes: list[str] | None = None) -> TrainData:
    ds = spec.dataset
    classes = classes or class_names(Path(ds.root), "train")
    tr = scan_split(Path(ds.root), "train", classes, ds.corrupt_images.value)
    va = scan_split(Path(ds.root), "val", classes, ds.corrupt_images.value)
    sampler: Sampler[int] | None = None
    if ctx.world_size > 1:
        from torch.utils.data.distributed import DistributedSampler

        sampler = DistributedSampler(
            ImageListDataset(tr.items, None),
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=spec.seed,
        )
    bs = spec.train.batch_size
    nw = spec.train.num_workers
    train_dl = loader(
        tr,
        train_transform(ds.image_size, ds.mean, ds.std, ds.augmentation),
        bs,
        shuffle=True,
        num_workers=nw,
        sampler=sampler,
        drop_last=True,
    )
    val_dl = loader(va, eval_transform(ds.image_size, ds.mean, ds.std), bs, shuffle=False, num_workers=nw)
    corrupt = len(tr.corrupt) + len(va.corrupt)
    if corrupt:
        ctx.status.write(
            "progress", corrupt_images=corrupt, corrupt_files=[str(p) for p in (tr.corrupt + va.corrupt)[:20]]
        )
    return TrainData(classes, train_dl, val_dl, sampler, corrupt)


def new_model(spec: ClassificationSpec, num_classes: int) -> nn.Module:
    model = build_model(spec.model.backbone, num_classes)
    if spec.model.pretrained_path:
        stats = load_pretrained(
            model,
            spec.model.pretrained_path,
            spec.model.backbone,
            allow_unsafe_pickle=spec.model.allow_unsafe_pickle,
        )
        log.info("loaded %s: %s", spec.model.pretrained_path, stats)
    return model


def checkpoint_from(spec: ClassificationSpec, model: nn.Module, classes: list[str], **kw: Any) -> Checkpoint:
    return Checkpoint(
        model=model,
        backbone=kw.pop("backbone", spec.model.backbone),
        labels=list(classes),
        image_size=spec.dataset.image_size,
        mean=list(spec.dataset.mean),
        std=list(spec.dataset.std),
        **kw,
    )


def resolve(value: str | None, default: Path) -> Path:
    return Path(value) if value else default


def check_checkpoint_classes(ckpt: Checkpoint, spec: ClassificationSpec, what: str) -> None:
    data_classes = class_names(Path(spec.dataset.root), "train")
    if list(ckpt.labels) != data_classes:
        raise ValueError(f"{what} was trained on classes {ckpt.labels}, but dataset.root has {data_classes}")
    if ckpt.image_size != spec.dataset.image_size:
        log.warning(
            "%s was trained at %dpx; dataset.image_size=%d is used",
            what,
            ckpt.image_size,
            spec.dataset.image_size,
        )


# ------------------------------------------------------------------ predictors
class Predictor:
    """Logits for NCHW batches from a .pth (PyTorch) or .onnx (ONNX Runtime) model."""

    labels: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    kind: str

    def __call__(self, batch: torch.Tensor) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class TorchPredictor(Predictor):
    def __init__(self, ckpt: Checkpoint, device: torch.device):
        self.model = ckpt.model.eval().to(device)
        self.device = device
        self.labels, self.image_size, self.mean, self.std = ckpt.labels, ckpt.image_size, ckpt.mean, ckpt.std
        self.kind = "pytorch"
        self.lineage = ckpt.lineage

    @torch.no_grad()
    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.model(batch.to(self.device)).float().cpu().numpy()


class OnnxPredictor(Predictor):
    def __init__(self, path: Path):
        from protos.manifest import load_manifest
        from trainer.export import ort_session

        manifest_path = path.with_name("manifest.json")
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{path} has no manifest.json beside it (labels and preprocessing come from it)"
            )
        m = load_manifest(manifest_path)
        self.labels = list(m.labels)
        self.image_size = int(m.preprocessing.height)
        self.mean, self.std = list(m.preprocessing.mean), list(m.preprocessing.std)
        self.session = ort_session(path)
        self.input = self.session.get_inputs()[0].name
        self.kind = f"onnxruntime-{m.precision}"
        self.manifest = m

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        return self.session.run(None, {self.input: batch.numpy().astype(np.float32)})[0]


def load_predictor(path: Path, device: torch.device, *, allow_unsafe_pickle: bool = False) -> Predictor:
    if path.suffix == ".onnx":
        return OnnxPredictor(path)
    return TorchPredictor(load_checkpoint(path, allow_unsafe_pickle=allow_unsafe_pickle), device)


# ------------------------------------------------------------------ metrics
def classification_metrics(pred: np.ndarray, target: np.ndarray, labels: list[str]) -> dict[str, Any]:
    n = len(labels)
    cm = np.zeros((n, n), dtype=np.int64)
    np.add.at(cm, (target, pred), 1)
    tp = np.diag(cm).astype(float)
    precision = np.divide(tp, cm.sum(0), out=np.zeros(n), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros(n), where=cm.sum(1) > 0)
    f1 = np.divide(
        2 * precision * recall, precision + recall, out=np.zeros(n), where=(precision + recall) > 0
    )
    return {
        "accuracy": float(tp.sum() / max(1, cm.sum())),
        "macro_precision": float(precision.mean()),
        "macro_recall": float(recall.mean()),
        "macro_f1": float(f1.mean()),
        "num_images": int(cm.sum()),
        "per_class": {
            label: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(cm[i].sum()),
            }
            for i, label in enumerate(labels)
        },
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def plot_confusion(cm: list[list[int]], labels: list[str], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arr = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(labels), 1.0 + 0.8 * len(labels)), dpi=100)
    im = ax.imshow(arr, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            ax.text(
                j,
                i,
                str(arr[i, j]),
                ha="center",
                va="center",
                color="white" if arr[i, j] > arr.max() / 2 else "black",
            )
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2, default=str) + "\n", encoding="utf-8")
    return path
