"""Typed experiment specs: YAML file + dotted command-line overrides -> one validated object.

Every task defines one pydantic schema (sections like TAO's: ``model``, ``dataset``, ``train``,
``evaluate`` ...). The sections every task shares live here so a detection spec reads like a
classification spec. Loading goes YAML -> OmegaConf merge with the dotlist overrides (the
command line wins) -> pydantic validation with ``extra="forbid"``: an unknown key, a wrong type
or an out-of-range value is refused *before any work*, and the message names the key and what
is allowed there. Specs are data: no resolver that runs code is registered (OmegaConf's
``${a.b}`` interpolation of other keys is the only indirection).
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Iterable, Mapping
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = [
    "SpecError",
    "Section",
    "AugmentationSpec",
    "TrainSpec",
    "ExportSpec",
    "QuantizeSpec",
    "CalibrationMethod",
    "load_spec",
    "spec_to_dict",
]

S = TypeVar("S", bound=BaseModel)


class SpecError(ValueError):
    """A spec that cannot be used; the message names the key and what is allowed."""


class Section(BaseModel):
    """Base of every spec section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Optimizer(str, Enum):
    sgd = "sgd"
    adamw = "adamw"


class Scheduler(str, Enum):
    cosine = "cosine"
    step = "step"
    none = "none"


class AugmentationSpec(Section):
    """Train-time augmentation; every probability 0 disables that transform."""

    hflip: float = Field(0.5, ge=0, le=1, description="probability of a horizontal flip")
    vflip: float = Field(0.0, ge=0, le=1, description="probability of a vertical flip")
    rotation: float = Field(0.0, ge=0, le=180, description="max random rotation in degrees")
    color_jitter: float = Field(0.2, ge=0, le=1, description="brightness/contrast/saturation jitter")
    random_resized_crop: bool = Field(True, description="RandomResizedCrop instead of a plain resize")
    crop_scale: tuple[float, float] = Field((0.7, 1.0), description="RandomResizedCrop area range")

    @field_validator("crop_scale")
    @classmethod
    def _scale_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 < v[0] <= v[1] <= 1:
            raise ValueError("must be two numbers 0 < low <= high <= 1")
        return v


class TrainSpec(Section):
    """Optimisation settings shared by train, retrain and distill."""

    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1, description="per process")
    num_gpus: int = Field(1, ge=1, description=">1 runs DistributedDataParallel through torchrun")
    device: Device = Device.auto
    amp: bool = Field(True, description="mixed precision on CUDA (ignored on CPU)")
    channels_last: bool = Field(True, description="NHWC memory format on CUDA")
    optimizer: Optimizer = Optimizer.sgd
    lr: float = Field(0.05, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-5, ge=0)
    scheduler: Scheduler = Scheduler.cosine
    warmup_epochs: int = Field(0, ge=0)
    step_size: int = Field(10, ge=1, description="epochs between lr drops for scheduler=step")
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    clip_grad_norm: float = Field(0.0, ge=0, description="clip gradients to this total norm (0 = off)")
    backbone_lr_mult: float = Field(
        1.0, gt=0, le=1, description="the backbone's lr = lr x this (e.g. 0.1 for a pretrained backbone)"
    )
    num_workers: int = Field(2, ge=0)
    resume: bool | str = Field(
        False, description="true: resume from <results_dir>/<action>/last.pth; or a checkpoint path"
    )
    checkpoint_interval: int = Field(1, ge=1, description="epochs between last.pth saves")
    log_interval: int = Field(10, ge=1, description="steps between progress-bar loss updates")
    max_steps_per_epoch: int = Field(0, ge=0, description="0 = the whole epoch (for smoke runs)")


class ExportSpec(Section):
    checkpoint: str | None = Field(None, description="model to export; default <results_dir>/train/model.pth")
    opset: int = Field(17, ge=17, le=21)
    batch_size: int = Field(-1, description="-1 = dynamic batch dimension")
    parity_samples: int = Field(8, ge=1, description="real images compared against PyTorch")
    parity_atol: float = Field(1e-3, gt=0, description="allowed |onnx - torch| on the outputs ...")
    parity_rtol: float = Field(1e-4, ge=0, description="... plus this times max |torch output|")
    name: str = Field("pcb-classifier", description="model family name in the manifest")
    version: str | None = Field(None, description="default <name>:<action>-<utc timestamp>")

    @field_validator("version", "name", mode="before")
    @classmethod
    def _as_text(cls, v: Any) -> Any:
        # export.version=1 arrives as an int from YAML or a dotted override: a version is text
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return str(v)
        return v

    @field_validator("batch_size")
    @classmethod
    def _batch(cls, v: int) -> int:
        if v == 0 or v < -1:
            raise ValueError("must be -1 (dynamic) or a positive batch size")
        return v


class CalibrationMethod(str, Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


class QuantMode(str, Enum):
    ptq = "ptq"
    qat = "qat"


class QuantizeSpec(Section):
    checkpoint: str | None = Field(
        None,
        description="an FP32 model.onnx (with manifest) or a .pth; default <results_dir>/export/model.onnx",
    )
    mode: QuantMode = QuantMode.ptq
    num_calibration_samples: int = Field(64, ge=1)
    calibration_split: str = Field("train", pattern="^(train|val|test)$")
    calibrate_method: CalibrationMethod = CalibrationMethod.minmax
    per_channel: bool = True
    activation_type: str = Field("uint8", pattern="^(uint8|int8)$")
    weight_type: str = Field("int8", pattern="^(uint8|int8)$")
    evaluate: bool = Field(True, description="measure INT8 accuracy on the test split with ONNX Runtime")

    @field_validator("mode")
    @classmethod
    def _no_qat(cls, v: QuantMode) -> QuantMode:
        # refused here, before any work, rather than failing at run time: see docs/trainer.md
        if v is QuantMode.qat:
            raise ValueError(
                "mode=qat is not available: the only route that exported a working QAT Q/DQ ONNX is "
                "NVIDIA ModelOpt, which is not a dependency of edgeloop; use mode=ptq (ONNX Runtime "
                "static Q/DQ, calibrated on real images)"
            )
        return v


def _allowed_keys(schema: type[BaseModel], loc: tuple[Any, ...]) -> list[str] | None:
    """Field names allowed at the parent of ``loc`` (for messages about unknown keys)."""
    model: Any = schema
    for part in loc[:-1]:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
        # Optional[Section] -> Section
        for arg in getattr(model, "__args__", ()) or ():
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                model = arg
    if isinstance(model, type) and issubclass(model, BaseModel):
        return sorted(model.model_fields)
    return None


def _format_errors(schema: type[BaseModel], exc: ValidationError, source: str) -> str:
    lines = [f"invalid spec ({source}):"]
    for err in exc.errors():
        loc = tuple(err["loc"])
        key = ".".join(str(p) for p in loc)
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(schema, loc) or []
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            did = f" (did you mean '{hint[0]}'?)" if hint else ""
            lines.append(f"  unknown key '{key}'{did}; allowed keys here: {', '.join(allowed)}")
        else:
            got = err.get("input")
            got_s = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  key '{key}': {err['msg']}{got_s}")
    return "\n".join(lines)


def _to_container(
    source: str | Path | Mapping[str, Any] | BaseModel | None, overrides: Iterable[str]
) -> dict:
    from omegaconf import DictConfig, ListConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    base: DictConfig | ListConfig
    if source is None:
        base = OmegaConf.create({})
        origin = "<defaults>"
    elif isinstance(source, BaseModel):
        base = OmegaConf.create(json.loads(source.model_dump_json()))
        origin = "<object>"
    elif isinstance(source, Mapping):
        base = OmegaConf.create(dict(source))
        origin = "<dict>"
    else:
        path = Path(source)
        if not path.is_file():
            raise SpecError(f"spec file not found: {path}")
        try:
            base = OmegaConf.load(path)
        except Exception as exc:  # yaml.YAMLError and friends
            raise SpecError(f"cannot parse spec {path}: {exc}") from exc
        origin = str(path)
        if not isinstance(base, DictConfig):
            raise SpecError(
                f"spec {path} must be a mapping of sections (model:, dataset:, train: ...) at the top "
                f"level, not a {'list' if isinstance(base, ListConfig) else type(base).__name__}"
            )
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise SpecError(f"override {item!r} is not of the form key.sub=value")
    try:
        merged = OmegaConf.merge(base, OmegaConf.from_dotlist(overrides))
        data = OmegaConf.to_container(merged, resolve=True)
    except OmegaConfBaseException as exc:
        raise SpecError(f"cannot apply overrides {overrides}: {exc}") from exc
    if not isinstance(data, dict):
        raise SpecError(f"spec {origin} must be a mapping at the top level")
    return data


def load_spec(
    schema: type[S],
    source: str | Path | Mapping[str, Any] | BaseModel | None,
    overrides: Iterable[str] = (),
) -> S:
    """Load ``source`` (YAML path, mapping or spec object), apply ``key.sub=value`` overrides,
    validate against ``schema``. Raises :class:`SpecError` naming every bad key."""
    data = _to_container(source, overrides)
    origin = str(source) if isinstance(source, (str, Path)) else "spec"
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_format_errors(schema, exc, origin)) from None


def spec_to_dict(spec: BaseModel) -> dict[str, Any]:
    return json.loads(spec.model_dump_json())
