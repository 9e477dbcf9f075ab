"""The backend contract, run for every registered backend; a backend that cannot run here
(TensorRT without `import tensorrt` or a GPU) is skipped with its own reason."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from agent_testkit import colour_classifier, write_manifest

from agent.backends import BuildOptions, Precision, backend_names, get_backend
from agent.calibration import calibration_feeds
from agent.errors import CalibrationError
from agent.model_spec import resolve_model

VARIANTS = {
    "dynamic": {},
    "nhwc": {"layout": "NHWC"},
    "two_outputs": {"two_outputs": True},
    "static_batch": {"batch": 2},
    "two_inputs": {"two_inputs": True},
}


@pytest.fixture(params=backend_names())
def backend(request, profile):
    b = get_backend(request.param)
    device = b.default_device(profile)
    verdict = b.supports(profile, Precision.FP32, device)
    if not verdict.available:
        pytest.skip(f"{request.param} unavailable here: {verdict.reason}")
    return b, device


@pytest.fixture(scope="module")
def variants(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, kwargs in VARIANTS.items():
        folder = tmp_path_factory.mktemp(name)
        path = colour_classifier(folder / "model.onnx", **kwargs)
        write_manifest(path, layout=kwargs.get("layout", "NCHW"))
        out[name] = path
    return out


def _batch(model, n: int = 2) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    feeds = {}
    for spec in model.manifest.inputs:
        shape = [n if d < 0 else d for d in spec.shape]
        feeds[spec.name] = (
            rng.uniform(0, 1, size=shape).astype(np.float32) if spec.layout else np.ones(shape, np.float32)
        )
    return feeds


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_and_run_every_precision(backend, variants, images, tmp_path, variant, precision) -> None:
    b, device = backend
    model = resolve_model(variants[variant])
    feeds, calib_id, count = calibration_feeds(model.manifest, images, limit=8)
    options = BuildOptions(precision=Precision(precision), device=device, threads=1,
                           calibration=feeds, calibration_id=calib_id)  # fmt: skip
    out_dir = tmp_path / "engine"
    out_dir.mkdir()
    info = b.build(model.onnx_path, model.manifest, options, out_dir)
    assert all((out_dir / f).is_file() for f in info.files)
    if precision == "int8":
        assert info.calibration_time_s > 0
    engine = b.load(out_dir, model.manifest, options)
    assert [t.name for t in engine.inputs] == (["images", "gain"] if variant == "two_inputs" else ["images"])
    assert engine.outputs[0].name == "logits"
    assert len(engine.outputs) == (2 if variant == "two_outputs" else 1)
    assert engine.inputs[0].dtype == np.float32  # fp32 I/O at every precision
    if variant == "static_batch":
        assert engine.max_batch == 2
    feeds_in = _batch(model)
    out = engine.run(feeds_in)
    assert out["logits"].shape == (2, 3)
    # agreement with the fp32 reference (the colour model's margins are large)
    ref = get_backend("onnxruntime").load(_fp32_dir(model, tmp_path), model.manifest, BuildOptions())
    expected = ref.run(feeds_in)["logits"]
    tol = {"fp32": 1e-4, "fp16": 2e-2, "int8": 0.5}[precision]
    assert np.allclose(out["logits"], expected, atol=tol * max(1.0, float(np.abs(expected).max())))
    assert engine.memory_bytes() > 0
    engine.close()


def _fp32_dir(model, tmp_path: Path) -> Path:
    d = tmp_path / "ref"
    if not d.exists():
        d.mkdir()
        get_backend("onnxruntime").build(model.onnx_path, model.manifest, BuildOptions(), d)
    return d


def test_int8_without_calibration_data_says_what_is_missing(backend, variants, tmp_path) -> None:
    b, device = backend
    model = resolve_model(variants["dynamic"])
    with pytest.raises(CalibrationError, match="calib"):
        b.build(
            model.onnx_path, model.manifest, BuildOptions(precision=Precision.INT8, device=device), tmp_path
        )


def test_tensorrt_reports_why_it_is_unavailable(profile) -> None:
    trt = get_backend("tensorrt")
    verdict = trt.availability()
    try:
        import tensorrt  # noqa: F401
    except Exception:
        assert not verdict.available
        assert "tensorrt" in verdict.reason.lower()
        assert all(not c.available and c.reason for c in trt.capabilities(profile))


def test_tensorrt_version_rules_for_dla() -> None:
    """Pure version logic of the TensorRT backend (no TensorRT needed): DLA exists up to 10.7
    and again from 11.4.1 (NVIDIA's release notes; docs/agent.md)."""
    from agent.backends.tensorrt import dla_supported

    assert dla_supported("10.3.0")[0] and dla_supported("10.7.0.23")[0]
    assert (
        not dla_supported("10.8.0")[0] and not dla_supported("11.0.0")[0] and not dla_supported("11.4.0")[0]
    )
    assert dla_supported("11.4.1")[0] and dla_supported("12.0")[0]
    assert "11.2" in dla_supported("11.2.1")[1]


def test_multi_input_model_serves_and_benchmarks(tmp_path, profile, cache, images) -> None:
    from agent.bench import BenchConfig, benchmark_engine
    from agent.engines import build_engine

    path = colour_classifier(tmp_path / "model.onnx", two_inputs=True)
    write_manifest(path)
    model = resolve_model(path)
    assert [t.name for t in model.manifest.inputs] == ["images", "gain"]
    assert any("not images" in w for w in model.warnings)
    built = build_engine(model, profile=profile, cache=cache, precision="int8", calib_dir=images)
    report = benchmark_engine(built, eval_dir=images,
                              config=BenchConfig(scenarios=("singlestream",), duration_ms=100, min_queries=8))  # fmt: skip
    assert report.scenarios[0].valid and not report.errors


def test_tensorrt_int8_recipe_is_symmetric_qdq(model_path, images, tmp_path) -> None:
    """The Q/DQ file the TensorRT backend builds from (made here with ONNX Runtime's quantizer;
    TensorRT itself is not needed): int8 zero points all 0, weights behind their own Q/DQ pair,
    and the model still answers like the fp32 one."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from agent.backends.onnxruntime import quantize_qdq

    model = resolve_model(model_path)
    feeds, _, _ = calibration_feeds(model.manifest, images)
    out = tmp_path / "trt_qdq.onnx"
    quantize_qdq(
        model_path, out, BuildOptions(precision=Precision.INT8, calibration=feeds), symmetric_activations=True
    )
    q = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    zero_points = [
        inits[n.input[2]] for n in q.graph.node if n.op_type == "QuantizeLinear" and len(n.input) > 2
    ]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
    weight_q = [
        n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in ("w1", "w2", "fc_w")
    ]
    assert len(weight_q) == 3
    x = np.zeros((3, 3, 16, 16), np.float32)
    for i, c in enumerate((2, 1, 0)):
        x[i, c] = 0.8
    got = ort.InferenceSession(str(out)).run(None, {"images": x})[0]
    assert got.argmax(1).tolist() == [0, 1, 2]
