"""The detection experiment spec: the classification spec's shared sections and key names, plus
the RT-DETR keys in the spirit of TAO's spec (``model.num_queries``,
``model.pretrained_backbone_path``, ``evaluate.conf_threshold``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from pydantic import Field, field_validator, model_validator

from trainer.spec import ExportSpec, Optimizer, QuantizeSpec, Section, SpecError, TrainSpec
from trainer.ssl.spec import SSLSpec, check_unlabeled_root

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Architecture(str, Enum):
    rtdetr = "rtdetr"
    rtdetr_v2 = "rtdetr_v2"


class ModelSpec(Section):
    architecture: Architecture = Field(Architecture.rtdetr, description="transformers RT-DETR v1 or v2")
    backbone: str = Field("resnet18", description="see trainer.tasks.detection.backbones.list_backbones()")
    pretrained_path: str | None = Field(None, description="a detection model.pth to start from (all weights)")
    pretrained_backbone_path: str | None = Field(
        None, description="backbone weights: our classification model.pth, or a torchvision/timm state dict"
    )
    allow_unsafe_pickle: bool = Field(
        False,
        description="DANGER: load checkpoints that are not plain data (legacy pickles, e.g. a whole "
        "pickled module) with full pickle, which runs any code the file contains; only for files you trust",
    )
    num_queries: int = Field(100, ge=1, le=1000)
    d_model: int = Field(128, ge=16, description="hidden size of the encoder and decoder")
    encoder_ffn_dim: int = Field(512, ge=16)
    decoder_ffn_dim: int = Field(512, ge=16)
    decoder_layers: int = Field(3, ge=1, le=12)
    attention_heads: int = Field(8, ge=1)
    num_denoising: int = Field(100, ge=0, description="denoising queries during training (0 = off)")

    @field_validator("backbone")
    @classmethod
    def _known(cls, v: str) -> str:
        from trainer.tasks.detection.backbones import list_backbones

        if v not in list_backbones():
            raise ValueError(f"unknown detection backbone {v!r}; allowed: {', '.join(list_backbones())}")
        return v

    @model_validator(mode="after")
    def _v2_layers(self) -> ModelSpec:
        if self.architecture is Architecture.rtdetr_v2 and self.decoder_layers < 2:
            raise ValueError(
                "architecture rtdetr_v2 needs decoder_layers >= 2 (transformers ties layer 0's heads to the others)"
            )
        return self


class CorruptPolicy(str, Enum):
    skip = "skip"
    error = "error"


class BadBoxPolicy(str, Enum):
    fix = "fix"
    error = "error"


class DetectionAugmentation(Section):
    """Box-preserving train-time augmentation; 0 disables a transform."""

    hflip: float = Field(0.5, ge=0, le=1)
    vflip: float = Field(0.5, ge=0, le=1)
    color_jitter: float = Field(0.3, ge=0, le=1)
    zoom_out: float = Field(0.0, ge=0, le=3, description="max extra canvas (RandomZoomOut side_range 1..1+x)")
    iou_crop: float = Field(0.0, ge=0, le=1, description="probability of a RandomIoUCrop")


class DatasetSpec(Section):
    root: str = Field(
        ..., description="COCO root with train/ val/ test/, each holding images + annotations.json"
    )
    image_size: int = Field(256, ge=32, le=1280, description="square network input (stretch resize)")
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    corrupt_images: CorruptPolicy = CorruptPolicy.skip
    bad_boxes: BadBoxPolicy = BadBoxPolicy.fix
    augmentation: DetectionAugmentation = DetectionAugmentation()
    cache_mb: int = Field(
        4096, ge=0, description="decoded images kept in shared memory when a split fits (0 = off)"
    )
    unlabeled_root: str | None = Field(
        None, description="folder of images, searched recursively, for the ssl action (labels unused)"
    )

    @field_validator("image_size")
    @classmethod
    def _multiple_of_32(cls, v: int) -> int:
        if v % 32:
            raise ValueError("must be a multiple of 32 (the backbone's stride)")
        return v


class DetectionTrainSpec(TrainSpec):
    optimizer: Optimizer = Optimizer.adamw
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    # int | None over TrainSpec's int: null is sized here (trainer.tasks.detection.training, data);
    # the shared engine reads neither
    batch_size: int | None = Field(  # type: ignore[assignment]
        None, ge=1, description="per process; null = from the GPU's memory (16 on CPU)"
    )
    num_workers: int | None = Field(None, ge=0, description="loader processes; null = from the CPU cores")  # type: ignore[assignment]
    epochs: int = Field(50, ge=1)
    val_interval: int = Field(1, ge=1, description="epochs between mAP measurements on val")
    time_limit_s: float = Field(
        0,
        ge=0,
        description="training budget in seconds (0 = none): the schedule's warmup and decay fit inside it, "
        "then the epoch in progress is validated and the run stops",
    )
    budget_images: int = Field(
        0,
        ge=0,
        description="training budget in images seen (0 = none), like time_limit_s; the first to end wins",
    )
    ema_decay: float = Field(
        0.999, ge=0, lt=1, description="EMA of the weights, validated and exported (0 = off)"
    )
    ema_warmup_steps: int = Field(200, ge=1, description="EMA decay ramps up over about this many steps")
    clip_grad_norm: float = Field(
        0.1, ge=0, description="total gradient norm clip (RT-DETR's recipe; without it bf16 runs diverged)"
    )


class EvaluateSpec(Section):
    checkpoint: str | None = Field(None, description=".pth or .onnx; default <results_dir>/train/model.pth")
    split: str = Field("test", pattern="^(train|val|test)$")
    batch_size: int = Field(16, ge=1)
    conf_threshold: float = Field(0.0, ge=0, lt=1, description="detections below it are not scored")
    max_detections: int = Field(100, ge=1)


class InferenceSpec(Section):
    checkpoint: str | None = Field(None, description=".pth or .onnx; default <results_dir>/train/model.pth")
    input_dir: str | None = Field(None, description="folder of images; default <dataset.root>/test")
    batch_size: int = Field(16, ge=1)
    conf_threshold: float = Field(0.3, ge=0, lt=1)
    max_detections: int = Field(100, ge=1)
    annotate: int = Field(16, ge=0, description="how many annotated images to write (0 = none)")


class Criterion(str, Enum):
    L1 = "L1"
    L2 = "L2"


class BindingSpec(Section):
    teacher_module_name: str
    student_module_name: str
    criterion: Criterion = Criterion.L2
    weight: float = Field(1.0, ge=0.0)


def _default_bindings() -> list[BindingSpec]:
    # the hybrid encoder's three output maps (strides 8, 16, 32)
    names = ["model.encoder.fpn_blocks.1", "model.encoder.pan_blocks.0", "model.encoder.pan_blocks.1"]
    return [BindingSpec(teacher_module_name=n, student_module_name=n) for n in names]


class TeacherSpec(Section):
    backbone: str | None = Field(None, description="must match the checkpoint's backbone when set")
    checkpoint: str | None = Field(None, description="a detection model.pth")


class DistillSpec(Section):
    teacher: TeacherSpec = TeacherSpec()
    student_checkpoint: str | None = Field(
        None, description="start the student from this detection model.pth"
    )
    bindings: list[BindingSpec] = Field(default_factory=_default_bindings, description="feature distillation")
    logit_weight: float = Field(1.0, ge=0, description="matched-query class distillation (BCE on sigmoid)")
    box_weight: float = Field(2.0, ge=0, description="matched-query box distillation (L1 + GIoU)")
    temperature: float = Field(1.0, gt=0)
    gt_weight: float = Field(1.0, ge=0, description="weight of the ordinary detection loss")


class QuantScope(str, Enum):
    full = "full"
    conv_only = "conv_only"


class DetectionQuantizeSpec(QuantizeSpec):
    scope: QuantScope = Field(QuantScope.full, description="conv_only: quantize Conv nodes only")


class DetectionExportSpec(ExportSpec):
    name: str = Field("pcb-detector", description="model family name in the manifest")
    parity_atol: float = Field(
        2e-3, gt=0, description="max |onnx - torch| on matched probabilities and boxes"
    )


class DetectionSpec(Section):
    results_dir: str = "runs/detection"
    seed: int = 42
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec
    train: DetectionTrainSpec = DetectionTrainSpec()
    evaluate: EvaluateSpec = EvaluateSpec()
    inference: InferenceSpec = InferenceSpec()
    distill: DistillSpec = DistillSpec()
    quantize: DetectionQuantizeSpec = DetectionQuantizeSpec()
    export: DetectionExportSpec = DetectionExportSpec()
    ssl: SSLSpec = SSLSpec()


def _need_file(key: str, value: str | None) -> None:
    if value and not Path(value).is_file():
        raise SpecError(f"key '{key}': file not found: {value}")


def _need_split(spec: DetectionSpec, split: str) -> None:
    ann = Path(spec.dataset.root) / split / "annotations.json"
    if not ann.is_file():
        raise SpecError(
            f"key 'dataset.root': {ann} not found (expected <root>/<split>/ with images + annotations.json)"
        )


def _need_default(key: str, value: str | None, default: Path) -> None:
    path = Path(value) if value else default
    if not path.is_file():
        what = (
            f"file not found: {path}"
            if value
            else f"not set and the default {path} does not exist (run that action first)"
        )
        raise SpecError(f"key '{key}': {what}")


def check_paths(spec: DetectionSpec, action: str) -> None:
    """Refuse missing inputs before any work (called by the job runner)."""
    rd = Path(spec.results_dir)
    _need_file("model.pretrained_path", spec.model.pretrained_path)
    _need_file("model.pretrained_backbone_path", spec.model.pretrained_backbone_path)
    if action == "ssl":  # reads only the unlabelled folder
        return check_unlabeled_root(spec.dataset.unlabeled_root)
    if not Path(spec.dataset.root).is_dir():
        raise SpecError(f"key 'dataset.root': data folder not found: {spec.dataset.root}")
    if action in ("train", "distill"):
        _need_split(spec, "train")
        _need_split(spec, "val")
        if isinstance(spec.train.resume, str):
            _need_file("train.resume", spec.train.resume)
    if action == "evaluate":
        _need_split(spec, spec.evaluate.split)
        _need_default("evaluate.checkpoint", spec.evaluate.checkpoint, rd / "train" / "model.pth")
    elif action == "inference":
        _need_default("inference.checkpoint", spec.inference.checkpoint, rd / "train" / "model.pth")
        folder = (
            Path(spec.inference.input_dir) if spec.inference.input_dir else Path(spec.dataset.root) / "test"
        )
        if not folder.is_dir():
            raise SpecError(f"key 'inference.input_dir': folder not found: {folder}")
    elif action == "distill":
        if not spec.distill.teacher.checkpoint:
            raise SpecError("key 'distill.teacher.checkpoint': required for distill (a detection model.pth)")
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
