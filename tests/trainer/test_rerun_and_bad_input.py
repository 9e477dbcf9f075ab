"""Issue 14's smaller trainer cases: a failed re-run keeps the good run's records; an empty class
folder, a YAML list as spec and a junk checkpoint are refused naming the problem;
export.version=1 is accepted as the text "1"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from trainer.jobs import resolve_spec, run_action
from trainer.models.safe_load import CheckpointError
from trainer.spec import SpecError


def _last(path: Path) -> dict:
    return json.loads(path.read_text().splitlines()[-1])


def test_a_failed_rerun_keeps_the_good_runs_records(trained, tmp_path: Path) -> None:
    spec, res = trained
    spec = {**spec, "results_dir": str(tmp_path / "r")}
    good = run_action("classification", "evaluate", spec, [f"evaluate.checkpoint={res.model_path}"])
    out = good.output_dir
    spec_before, status_before = (out / "spec.yaml").read_bytes(), (out / "status.json").read_bytes()
    assert _last(out / "status.json")["status"] == "succeeded"

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00 not a checkpoint" * 16)
    with pytest.raises(CheckpointError, match=str(junk)):
        run_action("classification", "evaluate", spec, [f"evaluate.checkpoint={junk}"])
    # the good run's records are untouched; the failed attempt has its own, naming the file
    assert (out / "spec.yaml").read_bytes() == spec_before
    assert (out / "status.json").read_bytes() == status_before
    failed = _last(out / "attempt.status.json")
    assert failed["status"] == "failed" and str(junk) in failed["reason"]
    assert str(junk) in (out / "attempt.spec.yaml").read_text()

    # a later successful run replaces the records and clears the attempt
    again = run_action("classification", "evaluate", spec, [f"evaluate.checkpoint={res.model_path}"])
    assert _last(again.output_dir / "status.json")["status"] == "succeeded"
    assert (out / "status.json").read_bytes() != status_before
    assert not (out / "attempt.status.json").exists() and not (out / "attempt.spec.yaml").exists()


def test_an_empty_class_folder_is_refused_by_name(tiny_data, tmp_path: Path, make_spec) -> None:
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    empty = root / "train" / "scratch"
    empty.mkdir()
    with pytest.raises(ValueError, match=rf"class folder\(s\) with no images: {empty}"):
        run_action("classification", "train", make_spec(root, tmp_path / "r"))


def test_a_yaml_list_as_spec_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text("- model\n- dataset\n")
    with pytest.raises(SpecError, match=rf"spec {path} must be a mapping of sections.*not a list"):
        resolve_spec("classification", path, [])


def test_export_version_number_is_taken_as_text(tiny_data, tmp_path: Path, make_spec) -> None:
    spec = make_spec(tiny_data, tmp_path)
    assert resolve_spec("classification", spec, ["export.version=1"]).export.version == "1"
    spec["export"]["version"] = 2
    assert resolve_spec("classification", spec, []).export.version == "2"
    assert (
        resolve_spec("detection", {"dataset": {"root": str(tiny_data)}}, ["export.version=3"]).export.version
        == "3"
    )
