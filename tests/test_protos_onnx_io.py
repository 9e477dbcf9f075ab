"""protos.onnx_io: one set of rules for reading an ONNX graph's interface, used by the trainer,
the controller and the agent; a manifest that contradicts its graph is refused, naming why."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from protos import artifact_pb2
from protos.manifest import ManifestError
from protos.onnx_io import OnnxReadError, guess_layout, load_graph, opset_of, read_specs, verify_onnx_matches


def _graph(path: Path) -> Path:
    """NHWC uint8 image input with a symbolic batch, an initializer also listed as an input
    (older exporters do that), a [N, 4] float output."""
    x = helper.make_tensor_value_info("image", TensorProto.UINT8, ["batch", 8, 8, 3])
    w_init = numpy_helper.from_array(np.ones((192, 4), np.float32), "w")
    w_in = helper.make_tensor_value_info("w", TensorProto.FLOAT, [192, 4])
    y = helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 4])
    shape = numpy_helper.from_array(np.array([-1, 192], np.int64), "shape")
    nodes = [
        helper.make_node("Cast", ["image"], ["xf"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["xf", "shape"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["scores"]),
    ]
    g = helper.make_graph(nodes, "g", [x, w_in], [y], initializer=[w_init, shape])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_the_rules(tmp_path: Path) -> None:
    path = _graph(tmp_path / "m.onnx")
    inputs, outputs = read_specs(path)
    assert [(s.name, s.dtype, list(s.shape), s.layout) for s in inputs] == [
        ("image", "uint8", [-1, 8, 8, 3], "NHWC")
    ]
    assert [(s.name, s.dtype, list(s.shape), s.layout) for s in outputs] == [
        ("scores", "float32", [-1, 4], "")
    ]
    assert opset_of(load_graph(path)) == 17
    assert guess_layout([-1, 3, 224, 224]) == "NCHW" and guess_layout([1, 3, 5, 3]) == "NCHW"
    assert guess_layout([-1, 64, 64, 1]) == "NHWC" and guess_layout([-1, 10]) == ""


def test_not_onnx_is_named(tmp_path: Path) -> None:
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00not a model" * 10)
    with pytest.raises(OnnxReadError, match="junk.onnx is not an ONNX model"):
        read_specs(junk)


def test_the_agent_and_the_controller_read_the_same_specs(tmp_path: Path) -> None:
    """The same graph gives the same input/output specs through the agent's resolver and the
    controller's import check (the trainer's write_manifest is covered by the pipeline tests)."""
    from agent.model_spec import resolve_model
    from controller.services.artifacts import _fill_from_onnx

    path = _graph(tmp_path / "m.onnx")
    want = read_specs(path)
    agent = resolve_model(path).manifest
    ctl = artifact_pb2.Manifest()
    _fill_from_onnx(ctl, path)
    for m in (agent, ctl):
        assert (list(m.inputs), list(m.outputs)) == (want[0], want[1])


def _manifest(name: str = "image", **inp) -> artifact_pb2.Manifest:
    return artifact_pb2.Manifest(inputs=[artifact_pb2.TensorSpec(name=name, **inp)])


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (_manifest(dtype="float32"), "input 'image': manifest dtype float32, graph uint8"),
        (_manifest(shape=[-1, 3, 8, 8]), r"input 'image': manifest shape \[-1, 3, 8, 8\]"),
        (_manifest(shape=[-1, 8, 8]), r"manifest shape \[-1, 8, 8\], graph \[-1, 8, 8, 3\]"),
        (_manifest(name="pixels"), r"manifest inputs \['pixels'\] are not inputs of the ONNX graph"),
        (
            artifact_pb2.Manifest(outputs=[artifact_pb2.TensorSpec(name="logits")]),
            r"manifest outputs \['logits'\] are not outputs",
        ),
    ],
)
def test_a_manifest_that_contradicts_its_graph_is_refused(tmp_path: Path, manifest, reason) -> None:
    inputs, outputs = read_specs(_graph(tmp_path / "m.onnx"))
    with pytest.raises(ManifestError, match=reason):
        verify_onnx_matches(manifest, inputs, outputs)


def test_what_a_manifest_leaves_out_is_no_contradiction(tmp_path: Path) -> None:
    inputs, outputs = read_specs(_graph(tmp_path / "m.onnx"))
    verify_onnx_matches(_manifest(shape=[4, 8, 8, 3], layout="NHWC"), inputs, outputs)  # batch fixed: fits
    verify_onnx_matches(artifact_pb2.Manifest(), inputs, outputs)
