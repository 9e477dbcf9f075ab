"""Tiny ONNX models and image folders for the agent tests, built without torch.

The colour classifier is hand-weighted so that it is *right*: the first conv passes the R, G, B
channels through (plus a few random channels), global average pooling gives the mean colour and
the Gemm picks it, so on ``colour_folder`` images top-1 is 100 %. ``scrambled`` swaps the
classifier rows, which makes a model that loads and answers but fails an accuracy floor.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from protos import artifact_pb2
from protos.manifest import save_manifest, sha256_file

CLASSES = ("blue", "green", "red")  # sorted, so ImageFolder order == label order
COLOURS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}
SIZE = 16
OPSET = 17


def _conv_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.02, size=(8, 3, 3, 3)).astype(np.float32)
    for c in range(3):
        w1[c] = 0
        w1[c, c, 1, 1] = 1.0  # identity on R, G, B
    w2 = rng.normal(0, 0.02, size=(8, 8, 1, 1)).astype(np.float32)
    for c in range(3):
        w2[c] = 0
        w2[c, c, 0, 0] = 1.0
    return w1, w2


def colour_classifier(
    path: Path,
    *,
    batch: int | str = "N",
    layout: str = "NCHW",
    two_outputs: bool = False,
    two_inputs: bool = False,
    scrambled: bool = False,
    seed: int = 0,
) -> Path:
    """conv3x3 -> relu -> conv1x1 -> relu -> GAP -> flatten -> gemm (3 classes)."""
    w1, w2 = _conv_weights(seed)
    # class order (blue, green, red) = channels (2, 1, 0)
    gemm = np.zeros((3, 8), dtype=np.float32)
    rows = [2, 1, 0] if not scrambled else [0, 2, 1]
    for cls, channel in enumerate(rows):
        gemm[cls, channel] = 10.0
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.zeros(8, np.float32), "b2"),
        numpy_helper.from_array(gemm, "fc_w"),
        numpy_helper.from_array(np.zeros(3, np.float32), "fc_b"),
    ]
    nodes = []
    x = "images"
    if layout == "NHWC":
        nodes.append(helper.make_node("Transpose", ["images"], ["nchw"], perm=[0, 3, 1, 2]))
        x = "nchw"
    nodes += [
        helper.make_node("Conv", [x, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["features"], axis=1),
        helper.make_node(
            "Gemm", ["features", "fc_w", "fc_b"], ["raw_logits" if two_inputs else "logits"], transB=1
        ),
    ]
    if two_inputs:  # a second, non-image input: a per-sample gain on the logits
        nodes.append(helper.make_node("Mul", ["raw_logits", "gain"], ["logits"]))
    shape = [batch, 3, SIZE, SIZE] if layout == "NCHW" else [batch, SIZE, SIZE, 3]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])]
    if two_outputs:
        outputs.append(helper.make_tensor_value_info("features", TensorProto.FLOAT, [batch, 8]))
    inputs = [helper.make_tensor_value_info("images", TensorProto.FLOAT, shape)]
    if two_inputs:
        inputs.append(helper.make_tensor_value_info("gain", TensorProto.FLOAT, [batch, 1]))
    graph = helper.make_graph(nodes, "colour", inputs, outputs, inits)
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_manifest(onnx_path: Path, *, layout: str = "NCHW", version: str = "colour:1", **fields) -> Path:
    """manifest.json beside the ONNX, in the trainer's format."""
    model = onnx.load(str(onnx_path))
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    batch = batch_dim.dim_value if batch_dim.HasField("dim_value") else -1
    shape = [batch, 3, SIZE, SIZE] if layout == "NCHW" else [batch, SIZE, SIZE, 3]
    manifest = artifact_pb2.Manifest(
        schema_version=1,
        name=fields.pop("name", "colour"),
        version=version,
        task="classification",
        labels=list(CLASSES),
        inputs=[artifact_pb2.TensorSpec(name="images", dtype="float32", shape=shape, layout=layout)],
        preprocessing=artifact_pb2.Preprocessing(
            height=SIZE,
            width=SIZE,
            resize_mode="stretch",
            interpolation="bilinear",
            color_order="RGB",
            scale=1 / 255,
        ),
        sha256=sha256_file(onnx_path),
        onnx_file=onnx_path.name,
        precision="fp32",
        opset=OPSET,
        **fields,
    )
    return save_manifest(manifest, onnx_path.parent / "manifest.json")


def make_artifact(root: Path, name: str = "model", **kwargs) -> Path:
    """A directory with model.onnx + manifest.json; returns the ONNX path."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    layout = kwargs.get("layout", "NCHW")
    version = kwargs.pop("version", f"colour:{name}")
    onnx_path = colour_classifier(folder / "model.onnx", **kwargs)
    write_manifest(onnx_path, layout=layout, version=version)
    return onnx_path


def colour_folder(root: Path, per_class: int = 6, seed: int = 0, size: int = 24) -> Path:
    """root/<colour>/<i>.png with noisy solid colours."""
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.asarray(COLOURS[name], dtype=np.float32)
            img = np.clip(base + rng.normal(0, 20, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def manifest_dict(onnx_path: Path) -> dict:
    return json.loads((onnx_path.parent / "manifest.json").read_text())
