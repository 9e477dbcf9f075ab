"""The loop's fleet port: what a device's capability list offers, and which reports count."""

from __future__ import annotations

from types import SimpleNamespace

from controller.loop.fleet_adapter import measurement_from_report, precisions_of


def _report(**kw):
    base = dict(
        errors=[], fps=250.0, accuracy=91.5, model_version="pcb:a", backend="onnxruntime",
        precision="int8", latency_p90_ms=3.2, peak_memory_bytes=64_000_000, device_id="d1",
    )  # fmt: skip
    return SimpleNamespace(**{**base, **kw})


def test_precisions_follow_available_capabilities_in_a_stable_order() -> None:
    caps = [
        {"backend": "onnxruntime", "precision": "int8", "device": "cpu", "available": True},
        {"backend": "onnxruntime", "precision": "fp32", "device": "cpu", "available": True},
        {
            "backend": "tensorrt",
            "precision": "fp16",
            "device": "gpu:0",
            "available": False,
            "reason": "no GPU",
        },
    ]
    assert precisions_of(caps) == ["fp32", "int8"]
    assert precisions_of([]) == ["fp32"]


def test_a_report_with_errors_or_no_accuracy_is_not_a_measurement() -> None:
    m = measurement_from_report(_report(), "cpu-1t")
    assert (m.device_class, m.precision, m.fps, m.accuracy, m.memory_mb) == (
        "cpu-1t",
        "int8",
        250.0,
        91.5,
        64.0,
    )
    assert measurement_from_report(_report(errors=["build: calibration failed"]), "cpu-1t") is None
    assert measurement_from_report(_report(accuracy=None), "cpu-1t") is None
    assert measurement_from_report(_report(fps=None), "cpu-1t") is None
