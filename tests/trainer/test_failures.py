"""Failure cases and recovery: corrupt images, mismatched teacher/student, pretrained weights
that do not fit, resume after an interruption."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision

from trainer.datasets.folder import CorruptImageError
from trainer.distill import DistillationMismatchError
from trainer.jobs import run_action
from trainer.models.backbones import CheckpointMismatchError, build_model, load_pretrained
from trainer.models.checkpoint import load_checkpoint


@pytest.fixture
def data_with_corrupt(tiny_data, tmp_path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    bad = root / "train" / "ok" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
    return root, bad


def test_corrupt_image_skipped_and_counted(data_with_corrupt, tmp_path, make_spec):
    root, bad = data_with_corrupt
    res = run_action(
        "classification", "train", make_spec(root, tmp_path / "r"), ["train.max_steps_per_epoch=1"]
    )
    assert res.metrics["corrupt_images"] == 1
    status = [json.loads(x) for x in (res.output_dir / "status.json").read_text().splitlines()]
    assert any(str(bad) in s.get("corrupt_files", []) for s in status)
    assert str(bad) in (res.output_dir / "log.txt").read_text()


def test_corrupt_image_refused_with_name(data_with_corrupt, tmp_path, make_spec):
    root, bad = data_with_corrupt
    with pytest.raises(CorruptImageError, match=str(bad)):
        run_action(
            "classification", "train", make_spec(root, tmp_path / "r"), ["dataset.corrupt_images=error"]
        )
    last = json.loads((tmp_path / "r" / "train" / "status.json").read_text().splitlines()[-1])
    assert last["status"] == "failed" and "broken.png" in last["reason"]


def test_teacher_backbone_mismatch(trained, tmp_path):
    spec, res = trained
    d = {"teacher": {"backbone": "resnet50", "checkpoint": str(res.model_path)}}
    with pytest.raises(DistillationMismatchError, match="resnet50.*resnet18"):
        run_action("classification", "distill", {**spec, "results_dir": str(tmp_path), "distill": d})


def test_teacher_trained_on_other_classes(trained, tiny_data, tmp_path, make_spec):
    spec, res = trained
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    for split in ("train", "val", "test"):
        shutil.rmtree(root / split / "foreign_object")
    d = {"teacher": {"checkpoint": str(res.model_path)}}
    with pytest.raises(ValueError, match="trained on classes"):
        run_action("classification", "distill", {**make_spec(root, tmp_path / "r"), "distill": d})


def test_binding_to_unknown_module_names_candidates(trained, tmp_path):
    spec, res = trained
    d = {
        "teacher": {"checkpoint": str(res.model_path)},
        "bindings": [{"teacher_module_name": "layer9", "student_module_name": "layer4"}],
    }
    with pytest.raises(ValueError, match="module 'layer9' not found.*layer"):
        run_action("classification", "distill", {**spec, "results_dir": str(tmp_path), "distill": d})


def test_pretrained_torchvision_weights_get_a_new_head(tmp_path):
    torch.manual_seed(0)
    imagenet = torchvision.models.resnet18(weights=None)  # 1000-class head, as a torchvision download
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(imagenet.state_dict(), path)
    model = build_model("resnet18", 6)
    stats = load_pretrained(model, path, "resnet18")
    assert stats["head_reset"] == 2 and stats["missing"] == 0
    assert torch.equal(model.conv1.weight, imagenet.conv1.weight)
    assert model.fc.out_features == 6


def test_timm_style_checkpoint_with_state_dict_key(tmp_path):
    src = build_model("mobilenet_v3_small", 10)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}, path)
    model = build_model("mobilenet_v3_small", 6)
    assert load_pretrained(model, path, "mobilenet_v3_small")["loaded"] > 100


def test_pretrained_shape_mismatch_is_clear(tiny_data, tmp_path, make_spec):
    path = tmp_path / "other-width.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(32, 64, 3, 3)  # a checkpoint of another width
    torch.save(state, path)
    with pytest.raises(
        CheckpointMismatchError,
        match=r"(?s)does not fit backbone 'resnet18'.*layer1\.0\.conv1\.weight: checkpoint",
    ):
        load_pretrained(build_model("resnet18", 6), path, "resnet18")
    # through the action: refused, and the status says why
    spec = make_spec(tiny_data, tmp_path / "r", model={"backbone": "resnet18", "pretrained_path": str(path)})
    with pytest.raises(CheckpointMismatchError):
        run_action("classification", "train", spec)


def test_wrong_backbone_checkpoint(tmp_path):
    path = tmp_path / "mnv3.pth"
    torch.save(build_model("mobilenet_v3_small", 6).state_dict(), path)
    with pytest.raises(CheckpointMismatchError, match="missing"):
        load_pretrained(build_model("resnet18", 6), path, "resnet18")


def test_resume_continues_from_last_epoch(tiny_data, tmp_path, make_spec):
    spec = make_spec(tiny_data, tmp_path, train={"epochs": 1, "max_steps_per_epoch": 2})
    first = run_action("classification", "train", spec)
    assert load_checkpoint(first.output_dir / "last.pth").extra["epoch"] == 1
    second = run_action("classification", "train", spec, ["train.epochs=2", "train.resume=true"])
    history = json.loads((second.output_dir / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2]  # epoch 1 kept from the first run, epoch 2 trained now
    assert second.metrics["epochs"] == 2
    assert load_checkpoint(second.output_dir / "last.pth").extra["epoch"] == 2
    with pytest.raises(FileNotFoundError, match="resume"):
        run_action(
            "classification", "train", {**spec, "results_dir": str(tmp_path / "other")}, ["train.resume=true"]
        )
