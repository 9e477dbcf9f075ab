"""What the daemon asks of the device: the agent's own functions behind one small interface.

The fleet daemon downloads and verifies artifacts; an ``Executor`` does the device work (build
an engine, calibrate, health-check and evaluate, benchmark, switch model slots, roll back) and
returns ``fleet_pb2.Report`` messages. ``load_default_executor`` binds the agent's real
implementation; tests bind a small scripted one to exercise the control plane alone.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from protos import fleet_pb2


@dataclass
class Shards:
    calibration: Path | None = None
    evaluation: Path | None = None


@dataclass
class SlotState:
    active: str = ""
    candidate: str = ""
    previous: str = ""
    cached: list[str] = field(default_factory=list)


class Executor(Protocol):
    def state(self) -> SlotState: ...

    def deploy(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Deploy, shards: Shards
    ) -> fleet_pb2.Report:
        """Build, (calibrate,) health-check, evaluate and measure the candidate; activate it when
        ``command.activate`` and the health check passes. Raises on failure, leaving the active
        model serving."""
        ...

    def benchmark(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Benchmark, shards: Shards
    ) -> list[fleet_pb2.Report]: ...

    def calibrate(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Calibrate, shards: Shards
    ) -> fleet_pb2.Report: ...

    def switch(self, model_version: str) -> str:
        """Make a loaded version active; returns the active version."""
        ...

    def rollback(self, to_version: str = "") -> str:
        """Return to ``to_version`` (or the previous active one); returns the active version."""
        ...


class ExecutorUnavailable(RuntimeError):
    pass


def load_default_executor(agent_dir: Path, **options: object) -> Executor:
    """The agent's real executor (``agent.fleet_executor.create_executor``) when it is installed."""
    try:
        module = importlib.import_module("agent.fleet_executor")
    except ImportError as exc:
        raise ExecutorUnavailable(
            f"the agent's device functions are not available here ({exc}); "
            "install edgeloop[agent] on the device"
        ) from exc
    return module.create_executor(agent_dir=agent_dir, **options)
