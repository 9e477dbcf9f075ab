"""The classification experiment spec (one schema; YAML only overrides its defaults)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator

from trainer.spec import AugmentationSpec, ExportSpec, QuantizeSpec, Section, SpecError, TrainSpec
from trainer.ssl.spec import SSLSpec, check_unlabeled_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class CorruptPolicy(str, Enum):
    skip = "skip"
    error = "error"


class ModelSpec(Section):
    backbone: str = Field(
        "resnet18", description="see trainer.models.backbones.list_backbones() or timm:<name>"
    )
    pretrained_path: str | None = Field(None, description="local torchvision/timm/edgeloop checkpoint")
    allow_unsafe_pickle: bool = Field(
        False,
        description="DANGER: load checkpoints that are not plain data (legacy pickles, e.g. a whole "
        "pickled module) with full pickle, which runs any code the file contains; only for files you trust",
    )

    @field_validator("backbone")
    @classmethod
    def _known(cls, v: str) -> str:
        from trainer.models.backbones import list_backbones

        if v not in list_backbones() and not v.startswith("timm:"):
            raise ValueError(f"unknown backbone {v!r}; allowed: {', '.join(list_backbones())}, timm:<name>")
        return v


class DatasetSpec(Section):
    root: str = Field(..., description="ImageFolder root with train/ val/ test/")
    image_size: int = Field(224, ge=16, le=1024)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    corrupt_images: CorruptPolicy = CorruptPolicy.skip
    augmentation: AugmentationSpec = AugmentationSpec()
    unlabeled_root: str | None = Field(
        None, description="folder of images, searched recursively, for the ssl action (labels unused)"
    )


class EvaluateSpec(Section):
    checkpoint: str | None = Field(None, description=".pth or .onnx; default <results_dir>/train/model.pth")
    split: str = Field("test", pattern="^(train|val|test)$")
    batch_size: int = Field(64, ge=1)


class OutputFormat(str, Enum):
    csv = "csv"
    json = "json"
    both = "both"


class InferenceSpec(Section):
    checkpoint: str | None = Field(None, description=".pth or .onnx; default <results_dir>/train/model.pth")
    input_dir: str | None = Field(
        None, description="folder of images (recursive); default <dataset.root>/test"
    )
    output_format: OutputFormat = OutputFormat.both
    batch_size: int = Field(64, ge=1)
    topk: int = Field(3, ge=1)


class PruneMode(str, Enum):
    ratio = "ratio"
    threshold = "threshold"


class PruneSpec(Section):
    checkpoint: str | None = Field(None, description="default <results_dir>/train/model.pth")
    mode: PruneMode = PruneMode.ratio
    ratio: float = Field(
        0.5, ge=0.0, lt=1.0, description="fraction of channels removed per group (mode=ratio)"
    )
    threshold: float = Field(
        0.1, gt=0.0, lt=1.0, description="channels whose L2 importance / group max is below it are removed"
    )
    max_ratio: float = Field(
        0.9, gt=0.0, lt=1.0, description="never remove more of one group (mode=threshold)"
    )
    round_to: int = Field(8, ge=1, description="kept channels are a multiple of it")
    importance: str = Field("l2", pattern="^(l1|l2)$")
    global_pruning: bool = False


class RetrainSpec(Section):
    checkpoint: str | None = Field(None, description="default <results_dir>/prune/model.pth")


class Criterion(str, Enum):
    L1 = "L1"
    L2 = "L2"
    KL = "KL"


class BindingSpec(Section):
    teacher_module_name: str
    student_module_name: str
    criterion: Criterion = Criterion.L2
    weight: float = Field(1.0, ge=0.0)


class TeacherSpec(Section):
    backbone: str | None = Field(None, description="must match the checkpoint's backbone when set")
    checkpoint: str | None = Field(None, description="an edgeloop model.pth")


class DistillSpec(Section):
    teacher: TeacherSpec = TeacherSpec()
    student_checkpoint: str | None = Field(
        None,
        description="start the student from this model (e.g. a pruned one); default: fresh model.backbone",
    )
    temperature: float = Field(4.0, gt=0)
    logit_weight: float = Field(0.7, ge=0, le=1, description="KL weight; (1 - it) is the label loss weight")
    bindings: list[BindingSpec] = Field(default_factory=list)


class ClassificationSpec(Section):
    results_dir: str = "runs/classification"
    seed: int = 42
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec
    train: TrainSpec = TrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    inference: InferenceSpec = InferenceSpec()
    prune: PruneSpec = PruneSpec()
    retrain: RetrainSpec = RetrainSpec()
    distill: DistillSpec = DistillSpec()
    quantize: QuantizeSpec = QuantizeSpec()
    export: ExportSpec = ExportSpec()
    ssl: SSLSpec = SSLSpec()


def _need_file(key: str, value: str | None) -> None:
    if value and not Path(value).is_file():
        raise SpecError(f"key '{key}': file not found: {value}")


def _need_split(spec: ClassificationSpec, split: str) -> None:
    folder = Path(spec.dataset.root) / split
    if not folder.is_dir():
        raise SpecError(
            f"key 'dataset.root': {spec.dataset.root} has no '{split}' folder (expected an ImageFolder root with "
            "train/ val/ test/, one sub-folder per class)"
        )


def _need_default(key: str, value: str | None, default: Path) -> None:
    path = Path(value) if value else default
    if not path.is_file():
        raise SpecError(
            f"key '{key}': {'file not found: ' + str(path) if value else f'not set and the default {path} does not exist (run the action that makes it first)'}"
        )


def check_paths(spec: ClassificationSpec, action: str) -> None:
    """Refuse missing inputs before any work (called by the job runner)."""
    rd = Path(spec.results_dir)
    _need_file("model.pretrained_path", spec.model.pretrained_path)
    if action == "ssl":  # reads only the unlabelled folder
        return check_unlabeled_root(spec.dataset.unlabeled_root)
    if not Path(spec.dataset.root).is_dir():
        raise SpecError(f"key 'dataset.root': data folder not found: {spec.dataset.root}")
    if action in ("train", "retrain", "distill"):
        _need_split(spec, "train")
        _need_split(spec, "val")
        if isinstance(spec.train.resume, str):
            _need_file("train.resume", spec.train.resume)
    if action == "retrain":
        _need_default("retrain.checkpoint", spec.retrain.checkpoint, rd / "prune" / "model.pth")
    elif action == "evaluate":
        _need_split(spec, spec.evaluate.split)
        _need_default("evaluate.checkpoint", spec.evaluate.checkpoint, rd / "train" / "model.pth")
    elif action == "inference":
        _need_default("inference.checkpoint", spec.inference.checkpoint, rd / "train" / "model.pth")
        folder = (
            Path(spec.inference.input_dir) if spec.inference.input_dir else Path(spec.dataset.root) / "test"
        )
        if not folder.is_dir():
            raise SpecError(f"key 'inference.input_dir': folder not found: {folder}")
    elif action == "prune":
        _need_default("prune.checkpoint", spec.prune.checkpoint, rd / "train" / "model.pth")
    elif action == "distill":
        if not spec.distill.teacher.checkpoint:
            raise SpecError("key 'distill.teacher.checkpoint': required for distill (an edgeloop model.pth)")
        _need_file("distill.teacher.checkpoint", spec.distill.teacher.checkpoint)
        _need_file("distill.student_checkpoint", spec.distill.student_checkpoint)
    elif action == "export":
        _need_default("export.checkpoint", spec.export.checkpoint, rd / "train" / "model.pth")
        _need_split(spec, "val")
    elif action == "quantize":
        _need_default("quantize.checkpoint", spec.quantize.checkpoint, rd / "export" / "model.onnx")
        _need_split(spec, spec.quantize.calibration_split)
        if spec.quantize.evaluate:
            _need_split(spec, "test")
