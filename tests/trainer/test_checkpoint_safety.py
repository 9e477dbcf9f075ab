"""No code from data: every checkpoint load is weights_only=True. A pickle that would run code is
refused with the file named (and does not run); a legacy pickle loads only with the explicit
model.allow_unsafe_pickle flag; truncated or junk files are named; our own pruned format is
plain data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from trainer.jobs import run_action
from trainer.models.backbones import build_model
from trainer.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from trainer.models.safe_load import CheckpointError, UnsafeCheckpointError, load_file
from trainer.tasks.classification.pruning import prune_model


class _Payload:
    """Unpickling this runs ``touch <marker>`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def hostile(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, path)
    return path, marker


def test_hostile_pickle_is_refused_naming_the_file_and_does_not_run(hostile) -> None:
    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match=rf"{path}.*posix\.system.*model\.allow_unsafe_pickle"):
        load_file(path)
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        load_checkpoint(path)
    assert not marker.exists()


def test_hostile_pretrained_path_fails_the_run_and_does_not_run(
    hostile, tiny_data, tmp_path, make_spec
) -> None:
    path, marker = hostile
    spec = make_spec(tiny_data, tmp_path / "r", model={"backbone": "resnet18", "pretrained_path": str(path)})
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        run_action("classification", "train", spec)
    last = json.loads((tmp_path / "r" / "train" / "status.json").read_text().splitlines()[-1])
    assert last["status"] == "failed" and str(path) in last["reason"]
    assert not marker.exists()


def test_hostile_detection_files_are_refused(hostile) -> None:
    from trainer.tasks.detection.backbones import load_pretrained_backbone
    from trainer.tasks.detection.model import DetectorConfig, build_detector, load_detector

    path, marker = hostile
    with pytest.raises(UnsafeCheckpointError, match=str(path)):
        load_detector(path)
    det = build_detector(
        DetectorConfig(d_model=32, num_queries=5, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                       attention_heads=2)
    )  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match=rf"model\.pretrained_backbone_path {path}"):
        load_pretrained_backbone(det, path)
    assert not marker.exists()


def test_legacy_pickled_module_needs_the_explicit_flag(tmp_path: Path) -> None:
    """Format v1 pickled a pruned model's whole module: refused by default, loaded with the flag."""
    model = build_model("resnet18", 3).eval()
    legacy = tmp_path / "legacy.pth"
    torch.save(
        {"format": "edgeloop.v1", "task": "classification", "backbone": "resnet18", "labels": list("abc"),
         "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3, "state_dict": model.state_dict(),
         "module": model},
        legacy,
    )  # fmt: skip
    with pytest.raises(
        UnsafeCheckpointError, match="torchvision.models.resnet.ResNet.*allow_unsafe_pickle: true"
    ):
        load_checkpoint(legacy)
    ck = load_checkpoint(legacy, allow_unsafe_pickle=True)
    assert ck.structured and ck.labels == list("abc")


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00junk bytes, not a checkpoint" * 20, "truncated"],
    ids=["empty", "junk", "truncated"],
)
def test_truncated_or_junk_checkpoint_names_the_file(tmp_path: Path, content) -> None:
    path = tmp_path / "model.pth"
    if content == "truncated":
        good = save_checkpoint(
            Checkpoint(build_model("resnet18", 3), "resnet18", list("abc"), 32, [0.5] * 3, [0.5] * 3),
            tmp_path / "good.pth",
        )
        data = good.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"{path} is not a (readable )?PyTorch checkpoint"):
        load_checkpoint(path)


def test_not_our_format_is_named(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"a": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match=f"{path} is not an edgeloop checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenet_v3_small", "convnext_atto"])
def test_pruned_checkpoint_is_plain_data_and_rebuilds_exactly(tmp_path: Path, backbone: str) -> None:
    from trainer.models.backbones import head_module

    torch.manual_seed(0)
    model = build_model(backbone, 4).eval()
    x = torch.randn(2, 3, 64, 64)
    prune_model(model, x[:1], ignored=[head_module(model, backbone)], mode="ratio", ratio=0.5, round_to=8)
    path = save_checkpoint(
        Checkpoint(model, backbone, list("abcd"), 64, [0.5] * 3, [0.5] * 3, structured=True),
        tmp_path / "p.pth",
    )
    payload = torch.load(path, weights_only=True)  # our own format: no pickled objects
    assert "module" not in payload and payload["structure"]
    back = load_checkpoint(path)
    assert back.structured
    with torch.no_grad():
        assert torch.allclose(back.model(x), model(x), atol=1e-5)
    assert sum(p.numel() for p in back.model.parameters()) == sum(p.numel() for p in model.parameters())
