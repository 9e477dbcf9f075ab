"""Tiny real data and one trained model shared by the trainer tests (32 px, 96 images)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trainer.datasets.synth_pcb import synthesize
from trainer.jobs import run_action

torch.set_num_threads(1)

IMAGE_SIZE = 32


def base_spec(data: Path, results: Path, **sections) -> dict:
    spec = {
        "results_dir": str(results),
        "seed": 0,
        "model": {"backbone": "resnet18"},
        "dataset": {"root": str(data), "image_size": IMAGE_SIZE},
        "train": {
            "epochs": 1,
            "batch_size": 16,
            "num_workers": 0,
            "optimizer": "adamw",
            "lr": 0.002,
            "warmup_epochs": 0,
            "device": "cpu",
        },
        "export": {"parity_samples": 4},
        "quantize": {"num_calibration_samples": 8},
    }
    for key, value in sections.items():
        spec.setdefault(key, {}).update(value)
    return spec


@pytest.fixture(scope="session")
def make_spec():
    """``make_spec(data, results, **sections)`` -> a tiny spec dict."""
    return base_spec


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pcb") / "data"
    synthesize(root, 96, IMAGE_SIZE, seed=3)
    return root


@pytest.fixture(scope="session")
def trained(tiny_data, tmp_path_factory):
    """A resnet18 trained for one epoch: (spec dict, ActionResult)."""
    results = tmp_path_factory.mktemp("runs")
    spec = base_spec(tiny_data, results)
    return spec, run_action("classification", "train", spec)
