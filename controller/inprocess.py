"""The controller's Python API for code in the same process (the closed loop, the demo, tests).

Each method is one unit of work over the same service and crud functions the REST route of
the same name calls (``controller/api/routes/``), so the two cannot drift apart; only the
transport differs (a Python value instead of JSON, ``session_scope`` instead of the request's
session). Methods that change what the rollout engine must act on wake it, like the routes do.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlmodel import Session

from controller import crud
from controller.context import ControllerContext
from controller.db import session_scope
from controller.models import (
    ArtifactPublic,
    BenchmarkCreate,
    CalibrateCreate,
    CommandPublic,
    DeploymentState,
    DevicePublic,
    ModelVersionPublic,
    ResultPublic,
    ResultsMatrix,
    RollbackCreate,
    RolloutCreate,
    RolloutPublic,
    SwitchCreate,
)
from controller.services import artifacts, commands, results, rollouts


class InProcessAPI:
    """``import_model``, ``create_rollout``, ``send_benchmark``, ``wait_for_reports``,
    ``list_results``, ``results_matrix`` ... over one controller's context."""

    def __init__(self, ctx: ControllerContext | None = None) -> None:
        self._ctx = ctx

    @property
    def ctx(self) -> ControllerContext:
        if self._ctx is None:
            raise RuntimeError("the controller is not started (call start() first)")
        return self._ctx

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work on this controller's DB (commits on success)."""
        with session_scope(self.ctx.engine) as session:
            yield session

    def wake(self) -> None:
        """Something changed (a status, a report): run the rollout engine now."""
        self.ctx.wake()

    # ------------------------------------------------------------ models and shards
    def import_model(
        self, onnx_path: str | Path, manifest: str | Path, *, source: str = "import"
    ) -> ModelVersionPublic:
        """Import ``model.onnx`` + manifest (a path to manifest.json, or its JSON text)."""
        text = (
            Path(manifest).read_text(encoding="utf-8")
            if not str(manifest).lstrip().startswith("{")
            else str(manifest)
        )
        with self.session() as session:
            mv = artifacts.import_model(
                session=session,
                signer=self.ctx.signer,
                store_dir=self.ctx.settings.artifacts_dir,
                store=self.ctx.store,
                onnx_src=Path(onnx_path),
                manifest_json=text,
                source=source,
            )
            return crud.model_version_public(session=session, mv=mv)

    def import_artifact_dir(self, artifact_dir: str | Path, *, source: str = "trainer") -> ModelVersionPublic:
        """An artifact directory as the trainer writes it (model.onnx + manifest.json)."""
        d = Path(artifact_dir)
        return self.import_model(d / "model.onnx", d / "manifest.json", source=source)

    def import_shard(self, tar_path: str | Path, *, name: str = "") -> ArtifactPublic:
        with self.session() as session:
            art = artifacts.import_shard(
                session=session,
                signer=self.ctx.signer,
                store_dir=self.ctx.settings.artifacts_dir,
                store=self.ctx.store,
                src=Path(tar_path),
                name=name or Path(tar_path).name,
            )
            return ArtifactPublic.model_validate(art)

    # ------------------------------------------------------------ devices and commands
    def list_devices(
        self, *, tag: str | None = None, hardware_class: str | None = None, online: bool | None = None
    ) -> list[DevicePublic]:
        with self.session() as session:
            rows, _ = crud.list_devices(
                session=session, tag=tag, hardware_class=hardware_class, online=online
            )
            return [crud.device_public(d) for d in rows]

    def send_benchmark(self, device_id: str, benchmark_in: BenchmarkCreate | dict) -> str:
        """Ask a device to measure a model version; returns the command id."""
        if isinstance(benchmark_in, dict):
            benchmark_in = BenchmarkCreate.model_validate(benchmark_in)
        with self.session() as session:
            return commands.send_benchmark(
                session=session, hub=self.ctx.hub, device_id=device_id, benchmark_in=benchmark_in
            ).id

    def send_switch(self, device_id: str, model_version: str) -> str:
        with self.session() as session:
            return commands.send_switch(
                session=session,
                hub=self.ctx.hub,
                device_id=device_id,
                switch_in=SwitchCreate(model_version=model_version),
            ).id

    def send_rollback(self, device_id: str, to_version: str = "", reason: str = "operator") -> str:
        with self.session() as session:
            body = RollbackCreate(to_version=to_version, reason=reason)
            return commands.send_rollback(
                session=session, hub=self.ctx.hub, device_id=device_id, rollback_in=body
            ).id

    def send_calibrate(self, device_id: str, calibrate_in: CalibrateCreate | dict) -> str:
        if isinstance(calibrate_in, dict):
            calibrate_in = CalibrateCreate.model_validate(calibrate_in)
        with self.session() as session:
            return commands.send_calibrate(
                session=session, hub=self.ctx.hub, device_id=device_id, calibrate_in=calibrate_in
            ).id

    def wait_for_commands(
        self, command_ids: Sequence[str], *, timeout_s: float = 600.0
    ) -> list[CommandPublic]:
        """Until every command is succeeded or failed; ``message`` says why one failed."""
        rows = commands.wait_for_commands(self.ctx.engine, command_ids, timeout_s=timeout_s)
        return [CommandPublic.model_validate(c) for c in rows]

    def wait_for_reports(self, command_ids: Sequence[str], *, timeout_s: float = 600.0) -> list[ResultPublic]:
        rows = commands.wait_for_reports(self.ctx.engine, command_ids, timeout_s=timeout_s)
        return [ResultPublic.model_validate(r) for r in rows]

    # ------------------------------------------------------------ results
    def list_results(self, **filters: Any) -> list[ResultPublic]:
        """Filters: device_id, hardware_class, model_version, round_id, command_ids."""
        with self.session() as session:
            rows, _ = crud.list_results(session=session, **filters)
            return [ResultPublic.model_validate(r) for r in rows]

    def results_matrix(self, **filters: Any) -> ResultsMatrix:
        with self.session() as session:
            return results.results_matrix(session=session, **filters)

    # ------------------------------------------------------------ rollouts
    def create_rollout(self, rollout_in: RolloutCreate | dict) -> RolloutPublic:
        """Start a rollout (see services/rollouts.py); returns at once, the engine drives it."""
        if isinstance(rollout_in, dict):
            rollout_in = RolloutCreate.model_validate(rollout_in)
        with self.session() as session:
            rollout = rollouts.create_rollout(session=session, rollout_in=rollout_in)
            out = crud.rollout_public(session=session, rollout=rollout)
        self.ctx.wake()
        return out

    def get_rollout(self, rollout_id: str) -> RolloutPublic:
        with self.session() as session:
            return crud.rollout_public(
                session=session, rollout=crud.get_rollout(session=session, rollout_id=rollout_id)
            )

    def wait_for_rollout(self, rollout_id: str, *, timeout_s: float = 600.0) -> RolloutPublic:
        """Until the rollout is terminal and no device is still rolling back."""
        deadline = time.monotonic() + timeout_s
        while True:
            r = self.get_rollout(rollout_id)
            if r.state.terminal and not r.counts.get(DeploymentState.rolling_back.value):
                return r
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rollout {rollout_id} still {r.state.value} after {timeout_s:.0f}s: {r.counts}"
                )
            time.sleep(0.2)
