"""Engine backends, registered by name. A duplicate name is an error.

Backends are imported lazily by name so that importing the registry never imports a runtime
(``tensorrt`` may be absent or slow to load); ``get_backend("tensorrt")`` always succeeds and the
backend then reports itself unavailable with the reason.
"""

from __future__ import annotations

import importlib

from agent.backends.base import (
    Availability,
    Backend,
    BuildInfo,
    BuildOptions,
    Engine,
    Precision,
    TensorInfo,
)
from agent.errors import BackendUnavailable
from protos import fleet_pb2

__all__ = [
    "Availability",
    "Backend",
    "BuildInfo",
    "BuildOptions",
    "Engine",
    "Precision",
    "TensorInfo",
    "all_backends",
    "backend_names",
    "get_backend",
    "register_backend",
    "resolve_backend",
]

# name -> "module:Class"; built-ins are imported on first use.
_SPECS: dict[str, str] = {}
_INSTANCES: dict[str, Backend] = {}


def register_backend(name: str, target: str) -> None:
    """Register ``name`` -> ``"package.module:ClassName"``; refuses a duplicate name."""
    if name in _SPECS:
        raise ValueError(f"engine backend {name!r} is already registered ({_SPECS[name]})")
    _SPECS[name] = target


register_backend("onnxruntime", "agent.backends.onnxruntime:OnnxRuntimeBackend")
register_backend("tensorrt", "agent.backends.tensorrt:TensorRTBackend")


def backend_names() -> list[str]:
    return list(_SPECS)


def get_backend(name: str) -> Backend:
    if name not in _SPECS:
        raise ValueError(f"unknown backend {name!r}; registered: {', '.join(_SPECS)}")
    if name not in _INSTANCES:
        module_name, _, cls_name = _SPECS[name].partition(":")
        _INSTANCES[name] = getattr(importlib.import_module(module_name), cls_name)()
    return _INSTANCES[name]


def all_backends() -> list[Backend]:
    return [get_backend(n) for n in _SPECS]


def resolve_backend(
    name: str, profile: fleet_pb2.HardwareProfile, precision: Precision, device: str | None = None
) -> tuple[Backend, str]:
    """Pick the backend (``auto``: TensorRT where it can build this precision, else ONNX Runtime)
    and the device; raises ``BackendUnavailable`` with the reason when none fits."""
    candidates = ["tensorrt", "onnxruntime"] if name == "auto" else [name]
    reasons = []
    for candidate in candidates:
        backend = get_backend(candidate)
        dev = device or backend.default_device(profile)
        verdict = backend.supports(profile, precision, dev)
        if verdict.available:
            return backend, dev
        reasons.append(f"{candidate}: {verdict.reason}")
    raise BackendUnavailable(f"no backend can build {precision.value} on this host ({'; '.join(reasons)})")
