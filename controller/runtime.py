"""One running controller: settings, DB, signing key, gRPC fleet service, rollout engine,
telemetry, job runner and (optionally) the HTTP server, started and stopped together.

This is also the Python API of the controller for code in the same process (the closed loop,
the demo, tests): ``Controller(settings).start()`` and then ``import_model``, ``create_rollout``,
``send_benchmark``, ``wait_for_reports``, ``list_results``, ``results_matrix`` ...
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from sqlmodel import Session

from controller import crud
from controller.broker import LocalBroker, free_port, start_local_broker
from controller.core.config import Settings
from controller.db import make_engine, migrate, session_scope
from controller.metrics import Metrics
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
    RolloutState,
    SwitchCreate,
)
from controller.services import artifacts, commands, fleet, jobs, results, rollouts
from controller.services.hub import SessionHub
from controller.services.signing import load_or_create_signer
from controller.telemetry import TelemetryIngest

log = logging.getLogger(__name__)


class Controller:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = SessionHub()
        self.tokens = fleet.TokenCache()
        self.metrics = Metrics()
        self.public_mqtt_url: str | None = None
        self.broker: LocalBroker | None = None
        self.telemetry: TelemetryIngest | None = None
        self.grpc = None
        self.http = None
        self.http_port: int | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.engine = None
        self.signer = None
        self._loops = None

    # ------------------------------------------------------------ lifecycle
    def start(self, *, http: bool = False, telemetry: bool = True) -> Controller:
        from controller.grpc.server import GrpcServer

        s = self.settings
        s.resolve_secrets()
        self.engine = make_engine(s.database_url)
        migrate(self.engine)
        with session_scope(self.engine) as session:
            fleet.mark_all_disconnected(session=session)
            jobs.recover_interrupted(session=session)
        self.signer = load_or_create_signer(s.keys_dir)
        if telemetry:
            self._start_telemetry()
        self.grpc = GrpcServer(self, s.grpc_host, s.grpc_port).start()
        self._spawn("rollout-engine", self._rollout_loop)
        self._spawn("job-runner", self._job_loop)
        if http:
            self.start_http()
        return self

    def _start_telemetry(self) -> None:
        url = self.settings.mqtt_url
        if not url and self.settings.start_broker:
            try:
                self.broker = start_local_broker()
                url = self.broker.url
            except Exception as exc:
                log.warning("no MQTT broker could be started (%s): telemetry off", exc)
        if not url:
            return
        self.public_mqtt_url = url
        self.telemetry = TelemetryIngest(
            engine=self.engine, metrics=self.metrics, url=url, prefix=self.settings.telemetry_prefix
        ).start()

    def start_http(self) -> int:
        import uvicorn

        from controller.main import create_app

        port = self.settings.http_port or free_port()
        config = uvicorn.Config(
            create_app(self), host=self.settings.http_host, port=port, log_level="warning", access_log=False
        )
        self.http = uvicorn.Server(config)
        self._spawn("http", self.http.run)
        deadline = time.monotonic() + 20
        while not self.http.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.http.started:
            raise RuntimeError(f"HTTP server did not start on port {port}")
        self.http_port = port
        return port

    def _spawn(self, name: str, target) -> None:  # noqa: ANN001
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop everything this controller started (the DB and data dir stay)."""
        self._stop.set()
        self._wake.set()
        if self.http is not None:
            self.http.should_exit = True
        if self.grpc is not None:
            self.grpc.stop(grace=0.5)
        for t in self._threads:
            t.join(timeout=15)
        if self.telemetry is not None:
            self.telemetry.stop()
        if self.broker is not None:
            self.broker.stop()
        if self.engine is not None:
            self.engine.dispose()

    def wake(self) -> None:
        """Something changed (a status, a report): run the rollout engine now."""
        self._wake.set()

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc else self.settings.grpc_port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def _rollout_loop(self) -> None:
        last_flush = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.settings.rollout_tick_s)
            self._stop.wait(0.05)  # a burst of reports makes one tick, not one per report
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                with session_scope(self.engine) as session:
                    rollouts.tick(session=session, hub=self.hub)
                if time.monotonic() - last_flush > 2.0:
                    seen = self.hub.drain_heartbeats()
                    with session_scope(self.engine) as session:
                        if seen:
                            fleet.flush_heartbeats(session=session, seen=seen)
                        self._update_gauges(session)
                    last_flush = time.monotonic()
            except Exception:
                if not self._stop.is_set():
                    log.exception("rollout engine tick failed")

    def _update_gauges(self, session: Session) -> None:
        from sqlmodel import col, select

        from controller.models import Deployment, Device, Rollout

        rows = session.exec(select(Device.connected, Device.telemetry_state, Device.revoked)).all()
        online = sum(1 for c, t, r in rows if (c or t == "online") and not r)
        self.metrics.devices.labels("online").set(online)
        self.metrics.devices.labels("offline").set(len(rows) - online)
        self.metrics.rollout_deployments.clear()
        active = session.exec(
            select(Deployment.rollout_id, Deployment.state)
            .join(Rollout, col(Rollout.id) == Deployment.rollout_id)
            .where(col(Rollout.state).in_([RolloutState.running, RolloutState.paused]))
        ).all()
        for rollout_id, state in active:
            self.metrics.rollout_deployments.labels(rollout_id, state.value).inc()

    def _job_loop(self) -> None:
        while not self._stop.wait(1.0):
            try:
                while not self._stop.is_set() and jobs.run_next_job(self.engine, self._import_job_artifact):
                    pass
            except Exception:
                if not self._stop.is_set():
                    log.exception("job runner failed")

    def _import_job_artifact(self, onnx_path: str, manifest_path: str) -> str:
        from controller.errors import Conflict

        try:
            return self.import_model(onnx_path, Path(manifest_path), source="trainer").version
        except Conflict as exc:
            return f"not imported: {exc.message}"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A unit of work on this controller's DB (commits on success)."""
        with session_scope(self.engine) as session:
            yield session

    # ------------------------------------------------------------ Python API
    @property
    def loops(self):  # noqa: ANN201
        """Closed loops started through the API (controller/loop/service.py), made on first use."""
        if self._loops is None:
            from controller.loop.service import LoopRunner

            self._loops = LoopRunner(self)
        return self._loops

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
                signer=self.signer,
                store_dir=self.settings.artifacts_dir,
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
                signer=self.signer,
                store_dir=self.settings.artifacts_dir,
                src=Path(tar_path),
                name=name or Path(tar_path).name,
            )
            return ArtifactPublic.model_validate(art)

    def list_devices(
        self, *, tag: str | None = None, hardware_class: str | None = None, online: bool | None = None
    ) -> list[DevicePublic]:
        with self.session() as session:
            rows, _ = crud.list_devices(
                session=session, tag=tag, hardware_class=hardware_class, online=online
            )
            return [crud.device_public(d) for d in rows]

    def create_rollout(self, rollout_in: RolloutCreate | dict) -> RolloutPublic:
        """Start a rollout (see services/rollouts.py); returns at once, the engine drives it."""
        if isinstance(rollout_in, dict):
            rollout_in = RolloutCreate.model_validate(rollout_in)
        with self.session() as session:
            rollout = rollouts.create_rollout(session=session, rollout_in=rollout_in)
            out = crud.rollout_public(session=session, rollout=rollout)
        self.wake()
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
            if r.state in (
                RolloutState.succeeded,
                RolloutState.aborted,
                RolloutState.rolled_back,
            ) and not r.counts.get(DeploymentState.rolling_back.value):
                return r
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"rollout {rollout_id} still {r.state.value} after {timeout_s:.0f}s: {r.counts}"
                )
            time.sleep(0.2)

    def send_benchmark(self, device_id: str, benchmark_in: BenchmarkCreate | dict) -> str:
        """Ask a device to measure a model version; returns the command id."""
        if isinstance(benchmark_in, dict):
            benchmark_in = BenchmarkCreate.model_validate(benchmark_in)
        with self.session() as session:
            return commands.send_benchmark(
                session=session, hub=self.hub, device_id=device_id, benchmark_in=benchmark_in
            ).id

    def send_switch(self, device_id: str, model_version: str) -> str:
        with self.session() as session:
            return commands.send_switch(
                session=session,
                hub=self.hub,
                device_id=device_id,
                switch_in=SwitchCreate(model_version=model_version),
            ).id

    def send_rollback(self, device_id: str, to_version: str = "", reason: str = "operator") -> str:
        with self.session() as session:
            body = RollbackCreate(to_version=to_version, reason=reason)
            return commands.send_rollback(
                session=session, hub=self.hub, device_id=device_id, rollback_in=body
            ).id

    def send_calibrate(self, device_id: str, calibrate_in: CalibrateCreate | dict) -> str:
        if isinstance(calibrate_in, dict):
            calibrate_in = CalibrateCreate.model_validate(calibrate_in)
        with self.session() as session:
            return commands.send_calibrate(
                session=session, hub=self.hub, device_id=device_id, calibrate_in=calibrate_in
            ).id

    def wait_for_commands(
        self, command_ids: Sequence[str], *, timeout_s: float = 600.0
    ) -> list[CommandPublic]:
        """Until every command is succeeded or failed; ``message`` says why one failed."""
        rows = commands.wait_for_commands(self.engine, command_ids, timeout_s=timeout_s)
        return [CommandPublic.model_validate(c) for c in rows]

    def wait_for_reports(self, command_ids: Sequence[str], *, timeout_s: float = 600.0) -> list[ResultPublic]:
        rows = commands.wait_for_reports(self.engine, command_ids, timeout_s=timeout_s)
        return [ResultPublic.model_validate(r) for r in rows]

    def list_results(self, **filters: object) -> list[ResultPublic]:
        """Filters: device_id, hardware_class, model_version, round_id, command_ids."""
        with self.session() as session:
            rows, _ = crud.list_results(session=session, **filters)
            return [ResultPublic.model_validate(r) for r in rows]

    def results_matrix(self, **filters: object) -> ResultsMatrix:
        with self.session() as session:
            return results.results_matrix(session=session, **filters)
