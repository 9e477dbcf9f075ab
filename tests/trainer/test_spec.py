"""Spec loading and the registries: bad input is refused before any work, with names."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from trainer.jobs import resolve_spec, run_action
from trainer.models.backbones import list_backbones, register_backbone
from trainer.spec import SpecError
from trainer.tasks.registry import RegistryError, get_task, register_task

ROOT = Path(__file__).resolve().parents[2]


def test_example_spec_loads_and_overrides_win(tiny_data):
    spec = resolve_spec(
        "classification",
        ROOT / "trainer/specs/classification.yaml",
        [
            f"dataset.root={tiny_data}",
            "train.epochs=3",
            "model.backbone=mobilenet_v3_small",
            "prune.ratio=0.25",
        ],
    )
    assert spec.train.epochs == 3
    assert spec.model.backbone == "mobilenet_v3_small"
    assert spec.prune.ratio == 0.25
    assert spec.distill.bindings[0].teacher_module_name == "layer4"  # from the file, untouched


def test_unknown_key_names_key_and_allowed_keys(tiny_data, tmp_path, make_spec):
    with pytest.raises(SpecError) as err:
        resolve_spec("classification", make_spec(tiny_data, tmp_path), ["train.epoch=3"])
    msg = str(err.value)
    assert "train.epoch" in msg
    assert "did you mean 'epochs'" in msg
    assert "batch_size" in msg and "num_gpus" in msg  # the allowed keys are listed


def test_unknown_nested_key(tiny_data, tmp_path, make_spec):
    with pytest.raises(
        SpecError, match=r"distill\.teacher\.chekpoint.*allowed keys here: backbone, checkpoint"
    ):
        resolve_spec("classification", make_spec(tiny_data, tmp_path), ["distill.teacher.chekpoint=x"])


def test_wrong_type_and_enum_values(tiny_data, tmp_path, make_spec):
    spec = make_spec(tiny_data, tmp_path)
    with pytest.raises(SpecError, match=r"train\.epochs.*integer.*'many'"):
        resolve_spec("classification", spec, ["train.epochs=many"])
    with pytest.raises(SpecError, match=r"prune\.mode.*'ratio' or 'threshold'"):
        resolve_spec("classification", spec, ["prune.mode=magic"])
    with pytest.raises(SpecError, match=r"model\.backbone.*resnet18"):
        resolve_spec("classification", spec, ["model.backbone=resnet19"])
    with pytest.raises(SpecError, match=r"export\.opset"):
        resolve_spec("classification", spec, ["export.opset=13"])


def test_bad_override_syntax(tiny_data, tmp_path, make_spec):
    with pytest.raises(SpecError, match="key.sub=value"):
        resolve_spec("classification", make_spec(tiny_data, tmp_path), ["train.epochs"])


def test_missing_data_folder_refused_before_any_work(tmp_path, make_spec):
    spec = make_spec(tmp_path / "nowhere", tmp_path / "runs")
    with pytest.raises(SpecError, match=r"dataset\.root.*not found"):
        run_action("classification", "train", spec)
    assert not (tmp_path / "runs").exists()  # no results dir, no status: nothing was started


def test_missing_split_and_checkpoint_named(tiny_data, tmp_path, make_spec):
    (tmp_path / "half" / "train").mkdir(parents=True)
    with pytest.raises(SpecError, match="no 'val' folder"):
        run_action("classification", "train", make_spec(tmp_path / "half", tmp_path / "r"))
    with pytest.raises(SpecError, match=r"evaluate\.checkpoint.*run the action that makes it first"):
        run_action("classification", "evaluate", make_spec(tiny_data, tmp_path / "r2"))
    with pytest.raises(SpecError, match=r"distill\.teacher\.checkpoint"):
        run_action("classification", "distill", make_spec(tiny_data, tmp_path / "r3"))


def test_registries_refuse_duplicates():
    task = get_task("classification")
    with pytest.raises(RegistryError, match="already registered"):
        register_task("classification", schema=task.schema)
    with pytest.raises(RegistryError, match="already has an action named 'train'"):
        task.add_action(types.SimpleNamespace(__name__="x.actions.train", run=lambda spec, ctx: None))  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="already registered"):
        register_backbone("resnet18", head="fc", library="x", family="x")(lambda n: None)
    with pytest.raises(RegistryError, match="no action 'fly'.*train"):
        task.get_action("fly")
    with pytest.raises(RegistryError, match="unknown task 'segmentation'"):
        get_task("segmentation")


def test_required_backbones_registered():
    names = set(list_backbones())
    required = {
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
    }
    assert required <= names
    assert {"convnext_tiny", "vit_tiny"} & names


def test_cli_reports_spec_errors(tiny_data, tmp_path, capsys, make_spec):
    import yaml

    from edgeloop.cli import main

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(make_spec(tiny_data, tmp_path / "r")), encoding="utf-8")
    rc = main(["model", "classification", "train", "-e", str(path), "train.batch=4"])
    assert rc == 2
    assert "unknown key 'train.batch'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", sorted(p.name for p in (ROOT / "trainer/specs").glob("classification*.yaml"))
)
def test_shipped_specs_validate(name, tiny_data):
    spec = resolve_spec("classification", ROOT / "trainer/specs" / name, [f"dataset.root={tiny_data}"])
    assert spec.dataset.root == str(tiny_data)


def test_student_spec_bindings_resolve_on_real_models():
    from trainer.models.backbones import build_model, get_submodule

    spec = resolve_spec(
        "classification", ROOT / "trainer/specs/classification_student.yaml", ["dataset.root=."]
    )
    teacher, student = build_model(spec.distill.teacher.backbone, 6), build_model(spec.model.backbone, 6)
    for b in spec.distill.bindings:
        get_submodule(teacher, b.teacher_module_name)
        get_submodule(student, b.student_module_name)
