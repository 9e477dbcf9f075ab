"""Any ONNX vision model: with a manifest (checked) or without (inferred, with a warning)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from agent_testkit import colour_classifier
from PIL import Image

from agent.errors import ArtifactError
from agent.model_spec import resolve_model
from agent.preprocess import Preprocessor
from protos import artifact_pb2


def test_without_manifest_inputs_come_from_the_graph(tmp_path) -> None:
    path = colour_classifier(tmp_path / "foreign.onnx", layout="NHWC", two_outputs=True)
    model = resolve_model(path)
    assert not model.manifest_given and model.warnings and "--manifest" in model.warnings[0]
    spec = model.manifest.inputs[0]
    assert spec.layout == "NHWC" and list(spec.shape) == [-1, 16, 16, 3]
    assert [o.name for o in model.manifest.outputs] == ["logits", "features"]
    assert model.manifest.preprocessing.height == 16 and model.manifest.sha256


def test_manifest_beside_model_is_used_and_checked(model_path, tmp_path) -> None:
    model = resolve_model(model_path)
    assert model.manifest_given and list(model.manifest.labels) == ["blue", "green", "red"]
    copy = tmp_path / "a"
    shutil.copytree(model_path.parent, copy)
    data = bytearray((copy / "model.onnx").read_bytes())
    (copy / "model.onnx").write_bytes(bytes(data[: len(data) - 10]))  # truncated download
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        resolve_model(copy / "model.onnx")


def test_manifest_naming_a_missing_input_is_refused(model_path, tmp_path) -> None:
    manifest = json.loads((model_path.parent / "manifest.json").read_text())
    manifest["inputs"][0]["name"] = "pixels"
    (tmp_path / "m.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="pixels"):
        resolve_model(model_path, tmp_path / "m.json")


@pytest.mark.parametrize("mode", ["stretch", "center_crop", "letterbox"])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_preprocessing_follows_the_manifest(mode, layout) -> None:
    m = artifact_pb2.Manifest(
        inputs=[artifact_pb2.TensorSpec(name="x", dtype="float32", shape=[-1, 3, 8, 12], layout=layout)],
        preprocessing=artifact_pb2.Preprocessing(height=8, width=12, resize_mode=mode, color_order="BGR",
                                                 scale=1 / 255, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    )  # fmt: skip
    pre = Preprocessor.from_manifest(m)
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    out = pre(image)
    assert out.shape == ((3, 8, 12) if layout == "NCHW" else (8, 12, 3)) and out.dtype == np.float32
    channels = out if layout == "NCHW" else out.transpose(2, 0, 1)
    centre = channels[:, 4, 6]
    assert np.allclose(centre, [-1.0, -1.0, 1.0])  # BGR: red ends up last
