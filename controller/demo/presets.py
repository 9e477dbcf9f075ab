"""The demo's two sizes: ``quick`` (CI's end-to-end test, a few minutes on 2 cores) and ``full``.

Everything the demo decides is here as data, so the README can say exactly what ran. Goals are
relative to the baseline each class measured (``min_speedup``) because absolute FPS floors would
mean something different on every host the demo runs on; a real fleet sets ``min_fps`` or
``max_p90_latency_ms`` from its cameras instead (controller/loop/goals.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DemoPreset:
    name: str
    task: str
    num_images: int  # synthetic PCB images over train/val/test (70/15/15)
    image_size: int
    difficulty: str  # synthetic set: "easy" (larger defects, kinder camera) or "standard"
    baseline_backbone: str
    train_epochs: int
    retrain_epochs: int
    distill_epochs: int
    batch_size: int
    students: list[str]
    prune_ratios: list[float]
    per_round: int
    max_rounds: int
    min_rounds: int
    agents_per_class: int
    bench_duration_ms: int
    calibration_images: int
    goals: dict
    trainer_overrides: list[str] = field(default_factory=list)
    student_overrides: list[str] = field(default_factory=list)
    # the stream scenario: the conveyor clip (seconds, fps, WxH) played as live streams on each
    # class's canary (the chosen model; every candidate when a goal sets min_streams)
    clip_seconds: float = 2.0
    clip_fps: float = 30.0
    clip_size: tuple[int, int] = (320, 192)
    stream_counts: tuple[int, ...] = (1, 2)
    stream_step_s: float = 1.0

    @property
    def spec_file(self) -> str:
        return f"{self.task}.yaml"

    @property
    def metric_name(self) -> str:
        if self.task == "detection":
            return "mAP@[.5:.95] x 100 on the test split, measured on the device"
        return "top-1 accuracy (%) on the test split, measured on the device"


QUICK = DemoPreset(
    name="quick",
    task="classification",
    num_images=240,
    image_size=32,
    difficulty="easy",
    baseline_backbone="resnet34",
    train_epochs=2,
    retrain_epochs=1,
    distill_epochs=1,
    batch_size=32,
    students=["resnet18", "mobilenet_v3_small"],
    prune_ratios=[0.5, 0.7],
    per_round=2,
    max_rounds=2,
    min_rounds=2,
    agents_per_class=1,
    bench_duration_ms=300,
    calibration_images=12,
    goals={
        "defaults": {"max_accuracy_drop": 100.0},  # tiny runs: accuracy is noise, speed is real
        "classes": {
            "cpu-2t": {"min_speedup": 1.0},
            "cpu-1t": {"min_speedup": 2.0},
            "cpu-1t-throttled": {"min_speedup": 4.0},
        },
    },
    trainer_overrides=[
        "train.num_workers=0",
        "train.optimizer=adamw",
        "train.lr=0.002",
        "dataset.augmentation.random_resized_crop=false",
    ],
)

FULL = DemoPreset(
    name="full",
    task="classification",
    num_images=3000,
    image_size=64,
    difficulty="easy",
    baseline_backbone="resnet50",
    train_epochs=16,
    retrain_epochs=4,
    distill_epochs=10,
    batch_size=64,
    students=["resnet18", "mobilenet_v3_small"],
    prune_ratios=[0.5, 0.7],
    per_round=2,
    max_rounds=3,
    min_rounds=2,
    agents_per_class=2,
    bench_duration_ms=2000,
    calibration_images=96,
    goals={
        "defaults": {"max_accuracy_drop": 1.0},
        "classes": {
            "cpu-2t": {"min_speedup": 1.5},
            "cpu-1t": {"min_speedup": 2.5},
            "cpu-1t-throttled": {"min_speedup": 4.0},
        },
    },
    trainer_overrides=["train.num_workers=0", "train.optimizer=adamw", "train.lr=0.002"],
    clip_seconds=4.0,
    clip_size=(640, 384),
    stream_counts=(1, 2, 4, 8),
    stream_step_s=5.0,
)

# Detection (RT-DETR): candidates are distilled students (no channel pruning for this head);
# every one is measured at each precision the device offers, INT8 calibrated on the device.
DETECTION_TINY_HEAD = [
    "model.num_queries=10",
    "model.d_model=32",
    "model.encoder_ffn_dim=64",
    "model.decoder_ffn_dim=64",
    "model.decoder_layers=1",
    "model.attention_heads=2",
    "model.num_denoising=10",
]

QUICK_DETECTION = DemoPreset(
    name="quick",
    task="detection",
    num_images=48,
    image_size=64,
    difficulty="standard",
    baseline_backbone="resnet34",
    train_epochs=1,
    retrain_epochs=1,
    distill_epochs=1,
    batch_size=4,
    students=["resnet18", "convnext_atto"],
    prune_ratios=[],
    per_round=1,
    max_rounds=2,
    min_rounds=2,
    agents_per_class=1,
    bench_duration_ms=300,
    calibration_images=8,
    goals={
        "defaults": {"max_accuracy_drop": 100.0},  # one epoch: mAP is noise, speed is real
        "classes": {
            "cpu-2t": {"min_speedup": 1.0},
            "cpu-1t": {"min_speedup": 1.2},
            "cpu-1t-throttled": {"min_speedup": 1.5},
        },
    },
    trainer_overrides=[*DETECTION_TINY_HEAD, "train.num_workers=0", "quantize.num_calibration_samples=4"],
)

FULL_DETECTION = DemoPreset(
    name="full",
    task="detection",
    num_images=1200,
    image_size=128,
    difficulty="standard",
    baseline_backbone="resnet50",
    train_epochs=12,
    retrain_epochs=1,
    distill_epochs=12,
    batch_size=16,
    students=["resnet18", "convnext_atto"],
    prune_ratios=[],
    per_round=1,
    max_rounds=2,
    min_rounds=2,
    agents_per_class=2,
    bench_duration_ms=2000,
    calibration_images=32,
    goals={
        "defaults": {"max_accuracy_drop": 1.0},
        "classes": {
            "cpu-2t": {"min_speedup": 1.5},
            "cpu-1t": {"min_speedup": 2.0},
            "cpu-1t-throttled": {"min_speedup": 3.0},
        },
    },
    trainer_overrides=["model.d_model=128", "model.num_queries=50", "train.num_workers=0"],
    student_overrides=["model.d_model=64", "model.encoder_ffn_dim=256", "model.decoder_ffn_dim=256"],
    clip_seconds=4.0,
    clip_size=(640, 384),
    stream_counts=(1, 2, 4, 8),
    stream_step_s=5.0,
)

PRESETS = {(p.task, p.name): p for p in (QUICK, FULL, QUICK_DETECTION, FULL_DETECTION)}
