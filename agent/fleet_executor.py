"""The device side of the fleet daemon: ``agent.fleet.daemon`` downloads and verifies artifacts,
this executor does the device work with the agent's own functions (model slots, engine cache,
benchmark, telemetry, live inference) and returns ``fleet_pb2.Report`` messages.

Implements ``agent.fleet.executor.Executor``; ``create_executor`` is what
``agent.fleet.executor.load_default_executor`` binds.
"""

from __future__ import annotations

import logging
import tarfile
import threading
from dataclasses import replace
from pathlib import Path

from agent.bench import BenchConfig, PeakMemory, benchmark_engine
from agent.config import AgentSettings
from agent.dataplane import DataPlane
from agent.engine_cache import EngineCache
from agent.engines import build_engine, record_engine
from agent.errors import AgentError, ArtifactError, HealthCheckFailed
from agent.model_spec import resolve_model
from agent.probe import probe_hardware
from agent.server import InferenceServer
from agent.slots import ModelSlots
from agent.stats import RequestStats
from agent.telemetry import Telemetry, metrics_collector
from protos import fleet_pb2
from protos.manifest import ManifestError, manifest_from_json

log = logging.getLogger(__name__)

DEPLOY_BENCH = BenchConfig(scenarios=("singlestream", "offline"), duration_ms=1500, min_queries=32)


def extract_shard(path: Path | None, root: Path) -> Path | None:
    """A shard arrives as a .tar of images: extract once (safely) and return the folder."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return path
    dest = root / path.stem
    if not (dest / ".complete").exists():
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(path) as tar:
                tar.extractall(dest, filter="data")  # refuses absolute paths, links out, devices
        except (tarfile.TarError, OSError) as exc:
            raise ArtifactError(f"shard {path.name} is not a readable tar: {exc}") from exc
        (dest / ".complete").touch()
    # a tar holding one top-level folder: use it
    children = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return children[0] if len(children) == 1 and children[0].is_dir() and _has_subdirs(children[0]) else dest


def _has_subdirs(path: Path) -> bool:
    return any(p.is_dir() for p in path.iterdir())


class FleetExecutor:
    def __init__(
        self,
        agent_dir: Path,
        *,
        threads: int | None = None,
        mqtt_url: str | None = None,
        hardware_class: str | None = None,
        device_id: str = "",  # without it, telemetry starts at attach_telemetry() after registration
        serve_port: int | None = 0,
        deploy_bench: BenchConfig | None = DEPLOY_BENCH,
    ) -> None:
        settings = AgentSettings.from_env()
        settings = replace(
            settings,
            agent_dir=Path(agent_dir),
            threads=threads or settings.threads,
            hardware_class=hardware_class or settings.hardware_class,
            mqtt_url=mqtt_url or settings.mqtt_url,
        )
        self.settings = settings
        self.profile = probe_hardware(threads=settings.threads, hardware_class=settings.hardware_class)
        self.cache = EngineCache(settings.cache_dir)
        self.shard_root = settings.agent_dir / "shards"
        self.deploy_bench = deploy_bench
        self.telemetry: Telemetry | None = None
        self.slots = ModelSlots(profile=self.profile, cache=self.cache, threads=settings.threads,
                                state_dir=settings.slots_dir, on_event=self._event)  # fmt: skip
        self.stats = RequestStats()
        self.slots.restore()
        self.server = None
        if serve_port is not None:
            self.server = InferenceServer(DataPlane(self.slots, self.stats), host="0.0.0.0", port=serve_port)
            self.server.start()
            log.info("live inference on port %d", self.server.port)
        if settings.mqtt_url and device_id:
            self.attach_telemetry(device_id, settings.mqtt_url, settings.telemetry_prefix)
        self._lock = threading.Lock()

    def attach_telemetry(self, device_id: str, mqtt_url: str = "", prefix: str = "") -> None:
        """Publish telemetry as ``device_id`` (the id the controller assigned at registration,
        with the broker and prefix of its RegisterResponse when given). Replaces a running one."""
        url = mqtt_url or self.settings.mqtt_url
        if not url:
            return
        if self.telemetry is not None:
            self.telemetry.stop()
        self.telemetry = Telemetry(url, device_id, prefix=prefix or self.settings.telemetry_prefix,
                                   hardware_class=self.profile.hardware_class).start()  # fmt: skip
        self.telemetry.start_metrics(metrics_collector(self.slots, self.stats))

    def _event(self, event: str, model_version: str, details: dict) -> None:
        if self.telemetry is not None:
            self.telemetry.event(event, model_version, details)

    # -- Executor protocol
    def state(self):
        from agent.fleet.executor import SlotState

        slots = self.slots
        return SlotState(
            active=slots.active.version if slots.active else "",
            candidate=slots.candidate.version if slots.candidate else "",
            previous=slots.previous.version if slots.previous else "",
            cached=sorted({e.get("model_version", "") for e in self.cache.entries()} - {""}),
        )

    def _manifest(self, manifest_json: str):
        try:
            return manifest_from_json(manifest_json) if manifest_json else None
        except ManifestError as exc:
            raise ArtifactError(str(exc)) from exc

    def deploy(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Deploy, shards
    ) -> fleet_pb2.Report:
        calib = extract_shard(shards.calibration, self.shard_root)
        evaluation = extract_shard(shards.evaluation, self.shard_root)
        with self._lock, PeakMemory() as memory:
            result = self.slots.deploy(onnx_path, self._manifest(manifest_json), backend=command.backend or "auto",
                                       precision=command.precision or "fp32", calib_dir=calib, eval_dir=evaluation,
                                       accuracy_floor=command.accuracy_floor, activate=command.activate)  # fmt: skip
            if not result.ok:
                raise HealthCheckFailed(result.reason)
            loaded = self.slots.active if result.activated else self.slots.candidate
            report = record_engine(fleet_pb2.Report(), loaded.built)
            report.accuracy.update(result.accuracy)
            if evaluation is not None and not result.accuracy:
                from agent.evaluate import evaluate

                report.accuracy.update(evaluate(loaded.engine, loaded.manifest, evaluation))
            if self.deploy_bench is not None:
                benchmark_engine(loaded.built, config=self.deploy_bench, report=report)
        report.peak_memory_bytes = memory.peak
        return report

    def benchmark(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Benchmark, shards
    ) -> list[fleet_pb2.Report]:
        calib = extract_shard(shards.calibration, self.shard_root)
        evaluation = extract_shard(shards.evaluation, self.shard_root)
        config = BenchConfig(
            scenarios=tuple(command.scenarios) or ("singlestream", "offline", "server"),
            duration_ms=command.duration_ms or 3000,
        )
        model = resolve_model(onnx_path, self._manifest(manifest_json))
        reports = []
        for backend in list(command.backends) or ["auto"]:
            for precision in list(command.precisions) or ["fp32"]:
                report = fleet_pb2.Report(model_version=model.manifest.version, backend=backend, precision=precision,
                                          hardware_fingerprint=self.profile.fingerprint,
                                          round_id=command.round_id)  # fmt: skip
                with self._lock, PeakMemory() as memory:
                    try:
                        built = build_engine(model, profile=self.profile, cache=self.cache, backend=backend,
                                             precision=precision, calib_dir=calib,
                                             threads=self.settings.threads)  # fmt: skip
                    except AgentError as exc:
                        report.errors.append(f"build: {exc}")
                    else:
                        record_engine(report, built)
                        benchmark_engine(built, eval_dir=evaluation, config=config, report=report)
                        built.engine.close()
                report.peak_memory_bytes = memory.peak
                self._event("benchmarked", report.model_version, {
                    "backend": report.backend, "precision": precision, "errors": list(report.errors)[:3],
                })  # fmt: skip
                reports.append(report)
        return reports

    def calibrate(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Calibrate, shards
    ) -> fleet_pb2.Report:
        calib = extract_shard(shards.calibration, self.shard_root)
        model = resolve_model(onnx_path, self._manifest(manifest_json))
        with self._lock:
            built = build_engine(model, profile=self.profile, cache=self.cache, backend=command.backend or "auto",
                                 precision=command.precision or "int8", calib_dir=calib,
                                 threads=self.settings.threads)  # fmt: skip
        built.engine.close()
        self._event("calibrated", model.manifest.version, {"engine_key": str(built.key)})
        return record_engine(fleet_pb2.Report(), built)

    def switch(self, model_version: str) -> str:
        return self.slots.switch(model_version).version

    def rollback(self, to_version: str = "") -> str:
        return self.slots.rollback(to_version, reason="controller command").version

    def close(self) -> None:
        if self.server:
            self.server.stop()
        if self.telemetry:
            self.telemetry.stop()


def create_executor(agent_dir: Path, **options) -> FleetExecutor:
    return FleetExecutor(Path(agent_dir), **options)
