"""The agent's runtime: one device's engine cache, model slots, live inference and telemetry,
built the same way by ``edgeloop agent serve`` and ``edgeloop agent run``.

Lifecycle. Constructing an ``AgentRuntime`` only assembles objects (it probes the hardware,
which reads it, and the engine cache makes its folder): no thread, no socket, no broker
connection. ``start()`` restores the model slots saved by the last run, starts dynamic batching
(when ``batch_delay_ms`` is set) and the served components, and publishes metrics once telemetry
is attached; ``close()`` stops all of it, the served components in reverse order.
``attach_telemetry(device_id)`` connects to the broker under the id the device goes by (the
controller assigns it at registration; ``agent serve`` names it): before ``start()`` it already
publishes state and events (a deploy's ``built`` and ``switched``), the metrics begin with
``start()``.

Served components answer clients from the runtime's one ``DataPlane`` (the model slots, request
statistics, the model repository and the batcher): the Open Inference Protocol gRPC server and
its HTTP/REST twin (with ``/metrics``). Adding another front end (video pipelines) is one more
entry in ``_components()``: anything with ``start()`` and ``stop()`` (``Served``).

Device work. ``deploy``, ``benchmark``, ``calibrate``, ``switch`` and ``rollback`` are what the
fleet daemon (``agent.fleet.daemon``) asks of the device once it has downloaded and verified the
artifacts; they return ``fleet_pb2.Report`` messages and run one at a time while live inference
goes on. The slot state (``slots/slots.json``, written atomically by ``agent.slots``) records
each slot's resolved manifest, backend, precision, calibration folder and engine key, so a
restarted agent serves the same model under the same name and version.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from agent.bench import SCENARIOS, BenchConfig, PeakMemory, StreamScenario, benchmark_engine
from agent.config import AgentSettings
from agent.dataplane import Batching, DataPlane, Limits
from agent.engine_cache import EngineCache
from agent.engines import build_engine, record_engine
from agent.errors import AgentError, ArtifactError, HealthCheckFailed
from agent.evaluate import evaluate
from agent.http_server import HttpInferenceServer
from agent.metrics import render_metrics
from agent.model_spec import ResolvedModel, resolve_model
from agent.probe import probe_hardware
from agent.repository import ModelRepository
from agent.server import InferenceServer
from agent.shards import Shards, extract_shard, video_in
from agent.slots import ModelSlots
from agent.stats import RequestStats
from agent.stream.infer import build_fixed_engine
from agent.stream.manager import StreamManager
from agent.stream.prometheus import render_stream_metrics
from agent.telemetry import Telemetry, metrics_collector
from protos import artifact_pb2, fleet_pb2
from protos.manifest import ManifestError, manifest_from_json

log = logging.getLogger(__name__)

# what a deploy measures on the candidate before it reports (a short run; benchmark() is the long one)
DEPLOY_BENCH = BenchConfig(scenarios=("singlestream", "offline"), duration_ms=1500, min_queries=32)


class Served(Protocol):
    """A component that answers clients from the runtime's dataplane."""

    def start(self) -> object: ...

    def stop(self) -> None: ...


@dataclass
class SlotState:
    """What the device holds, by model version: what it tells the controller in its Hello."""

    active: str = ""
    candidate: str = ""
    previous: str = ""
    cached: list[str] = field(default_factory=list)


def batching_of(pb: fleet_pb2.DynamicBatching, settings: AgentSettings) -> Batching:
    """A deploy's ``DynamicBatching`` -> the dataplane's; bounded by the agent's request limit."""
    preferred = tuple(sorted({int(b) for b in pb.preferred_batch_sizes if b > 0}))
    largest = pb.max_batch or (max(preferred) if preferred else settings.max_batch)
    return Batching(max_batch=max(1, min(largest, settings.max_request_batch)),
                    max_delay_s=max(pb.max_queue_delay_us, 0) / 1e6, preferred_batch_sizes=preferred)  # fmt: skip


def _manifest(manifest_json: str) -> artifact_pb2.Manifest | None:
    try:
        return manifest_from_json(manifest_json) if manifest_json else None
    except ManifestError as exc:
        raise ArtifactError(str(exc)) from exc


class AgentRuntime:
    def __init__(
        self,
        settings: AgentSettings,
        *,
        profile: fleet_pb2.HardwareProfile | None = None,
        remember_slots: bool = True,
        deploy_bench: BenchConfig | None = DEPLOY_BENCH,
    ) -> None:
        """``remember_slots=False`` (``agent serve``): serve the model given on the command line,
        restore nothing and save no slot state. ``deploy_bench=None``: a deploy measures nothing."""
        self.settings = settings
        self.profile = profile or probe_hardware(
            threads=settings.threads, hardware_class=settings.hardware_class
        )
        self.cache = EngineCache(settings.cache_dir)
        self.slots = ModelSlots(profile=self.profile, cache=self.cache, threads=settings.threads,
                                state_dir=settings.slots_dir if remember_slots else None,
                                on_event=self._event)  # fmt: skip
        self.stats = RequestStats()
        self.dataplane = DataPlane(self.slots, self.stats, limits=Limits(
            max_batch=settings.max_request_batch, max_bytes=settings.max_request_bytes))  # fmt: skip
        self.deploy_bench = deploy_bench
        self._work_lock = threading.Lock()  # device work runs one command at a time
        self.shard_root = settings.agent_dir / "shards"
        self.telemetry: Telemetry | None = None
        # video pipelines (docs/stream.md): on the slots' engines, events through telemetry, kept on disk
        self.streams = StreamManager(slots=self.slots, telemetry=lambda: self.telemetry,
                                     build=lambda spec: build_fixed_engine(spec, self.profile, self.cache, settings.threads),
                                     state_dir=settings.agent_dir / "pipelines" if remember_slots else None)  # fmt: skip
        self.grpc_server: InferenceServer | None = None
        self.http_server: HttpInferenceServer | None = None
        self.dataplane.repository = ModelRepository(self.slots, settings.model_repository,
                                                    lock=self._work_lock)  # fmt: skip
        self.served: list[Served] = []  # started, in start order
        self.started = False

    # -- dynamic batching per model (a fleet deploy's, kept across restarts)
    @property
    def _batching_file(self) -> Path | None:
        return self.settings.slots_dir / "batching.json" if self.slots.state_dir is not None else None

    def set_batching(self, version: str, batching: Batching | None) -> None:
        self.dataplane.set_batching(version, batching)
        path = self._batching_file
        if path is not None:
            doc = {v: b.as_json() for v, b in self.dataplane.model_batching.items()}
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(doc, indent=2), encoding="utf-8")
            tmp.replace(path)

    def _restore_batching(self) -> None:
        path = self._batching_file
        if path is None or not path.is_file():
            return
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            for version, b in doc.items():
                self.dataplane.set_batching(version, Batching.from_json(b))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("per-model batching in %s not restored (%s): the agent's settings apply", path, exc)

    # -- lifecycle
    def _components(self) -> Iterator[Served]:
        """The served components, built when started (building one may bind its port)."""
        token = self.settings.inference_token()
        if self.settings.serves_grpc:
            self.grpc_server = InferenceServer(
                self.dataplane, host=self.settings.serve_host, port=self.settings.serve_port, token=token
            )
            yield self.grpc_server
        if self.settings.serves_http:
            self.http_server = HttpInferenceServer(
                self.dataplane, host=self.settings.serve_host, port=self.settings.http_port, token=token,
                metrics=lambda: render_metrics(self.dataplane) + render_stream_metrics(self.streams),
            )  # fmt: skip
            yield self.http_server

    def start(self) -> AgentRuntime:
        if self.started:
            return self
        self.started = True
        try:
            self.slots.restore()
            self._restore_batching()
            self.streams.restore()
            if self.settings.batch_delay_ms > 0:
                self.dataplane.batcher = self.dataplane.make_batcher(
                    self.settings.max_batch,
                    self.settings.batch_delay_ms / 1000,
                    self.settings.preferred_batch_sizes,
                )
            for component in self._components():
                component.start()
                self.served.append(component)
        except BaseException:
            self.close()
            raise
        if self.grpc_server is not None:
            log.info("live inference on %s:%d (gRPC)", self.settings.serve_host, self.grpc_server.port)
        if self.http_server is not None:
            log.info(
                "live inference on %s:%d (HTTP/REST, /metrics)",
                self.settings.serve_host,
                self.http_server.port,
            )
        self._start_metrics()
        return self

    def close(self) -> None:
        self.streams.close()
        while self.served:
            self.served.pop().stop()
        self.dataplane.close_batchers()
        if self.telemetry is not None:
            self.telemetry.stop()
            self.telemetry = None
        self.started = False

    def __enter__(self) -> AgentRuntime:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- telemetry
    def attach_telemetry(self, device_id: str, mqtt_url: str = "", prefix: str = "") -> None:
        """Publish telemetry as ``device_id`` to ``mqtt_url`` (default: the settings' broker;
        neither = no telemetry) under ``prefix`` (default: the settings'). Replaces a running one."""
        url = mqtt_url or self.settings.mqtt_url
        if not url:
            return
        if self.telemetry is not None:
            self.telemetry.stop()
        self.telemetry = Telemetry(url, device_id, prefix=prefix or self.settings.telemetry_prefix,
                                   hardware_class=self.profile.hardware_class,
                                   spool_dir=self.settings.spool_dir).start()  # fmt: skip
        if self.started:
            self._start_metrics()

    def _start_metrics(self) -> None:
        if self.telemetry is not None:
            collect = metrics_collector(self.slots, self.stats)
            self.telemetry.start_metrics(
                lambda: collect() | ({"streams": s} if (s := self.streams.stats()) else {}),
                self.settings.metrics_interval_s,
            )

    def _event(self, event: str, model_version: str, details: dict) -> None:
        if self.telemetry is not None:
            self.telemetry.event(event, model_version, details)

    # -- device work (what the fleet daemon calls)
    def state(self) -> SlotState:
        slots = self.slots
        return SlotState(
            active=slots.active.version if slots.active else "",
            candidate=slots.candidate.version if slots.candidate else "",
            previous=slots.previous.version if slots.previous else "",
            cached=sorted({e.get("model_version", "") for e in self.cache.entries()} - {""}),
        )

    def deploy(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Deploy, shards: Shards
    ) -> fleet_pb2.Report:
        """Build, (calibrate,) health-check, evaluate and measure the candidate; activate it when
        ``command.activate`` and the health check passes. Raises on failure (``HealthCheckFailed``
        with the reason), leaving the active model serving."""
        calib = extract_shard(shards.calibration, self.shard_root)
        evaluation = extract_shard(shards.evaluation, self.shard_root)
        with self._work_lock, PeakMemory() as memory:
            result = self.slots.deploy(onnx_path, _manifest(manifest_json), backend=command.backend or "auto",
                                       precision=command.precision or "fp32", calib_dir=calib, eval_dir=evaluation,
                                       accuracy_floor=command.accuracy_floor, activate=command.activate)  # fmt: skip
            if not result.ok:
                raise HealthCheckFailed(result.reason)
            if command.HasField("batching"):
                self.set_batching(result.model_version, batching_of(command.batching, self.settings))
            loaded = self.slots.active if result.activated else self.slots.candidate
            if loaded is None:
                raise HealthCheckFailed("the deployed model is in neither slot after its health check")
            report = record_engine(fleet_pb2.Report(), loaded.built)
            report.accuracy.update(result.accuracy)
            if evaluation is not None and not result.accuracy:
                report.accuracy.update(evaluate(loaded.engine, loaded.manifest, evaluation))
            if self.deploy_bench is not None:
                benchmark_engine(loaded.built, config=self.deploy_bench, report=report)
        report.peak_memory_bytes = memory.peak
        return report

    def benchmark(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Benchmark, shards: Shards
    ) -> list[fleet_pb2.Report]:
        """One report per backend x precision asked for; a build that fails is a report with the
        error, not an exception."""
        calib = extract_shard(shards.calibration, self.shard_root)
        evaluation = extract_shard(shards.evaluation, self.shard_root)
        scenarios = tuple(command.scenarios) or SCENARIOS
        config = BenchConfig(
            scenarios=tuple(s for s in scenarios if s != "stream"),
            duration_ms=command.duration_ms or 3000,
            stream=self._stream_scenario(command, shards) if "stream" in scenarios else None,
        )
        model = resolve_model(onnx_path, _manifest(manifest_json))
        reports = []
        for backend in list(command.backends) or ["auto"]:
            for precision in list(command.precisions) or ["fp32"]:
                reports.append(
                    self._benchmark_one(model, backend, precision, calib, evaluation, config, command)
                )
        return reports

    def _stream_scenario(self, command: fleet_pb2.Benchmark, shards: Shards) -> StreamScenario:
        """The stream scenario a benchmark command asks for; refused (the command fails, naming
        why) without a clip or with counts or a step length out of range."""
        folder = extract_shard(shards.stream_clip, self.shard_root)
        if folder is None:
            raise ArtifactError("benchmark: scenario 'stream' needs a stream clip (Benchmark.stream_clip)")
        counts = tuple(int(n) for n in command.stream_counts) or (1, 2, 4, 8)
        if any(not 1 <= n <= 64 for n in counts):
            raise AgentError(f"benchmark: stream_counts must be 1..64, got {list(counts)}")
        step_s = float(command.stream_step_s or 10.0)
        if not 0.2 <= step_s <= 600:
            raise AgentError(f"benchmark: stream_step_s must be 0.2..600 s, got {step_s:g}")
        return StreamScenario(clip=video_in(folder), counts=counts, step_s=step_s)

    def _benchmark_one(
        self,
        model: ResolvedModel,
        backend: str,
        precision: str,
        calib: Path | None,
        evaluation: Path | None,
        config: BenchConfig,
        command: fleet_pb2.Benchmark,
    ) -> fleet_pb2.Report:
        report = fleet_pb2.Report(model_version=model.manifest.version, backend=backend, precision=precision,
                                  hardware_fingerprint=self.profile.fingerprint, round_id=command.round_id)  # fmt: skip
        with self._work_lock, PeakMemory() as memory:
            try:
                built = build_engine(model, profile=self.profile, cache=self.cache, backend=backend,
                                     precision=precision, calib_dir=calib, threads=self.settings.threads)  # fmt: skip
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
        return report

    def calibrate(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Calibrate, shards: Shards
    ) -> fleet_pb2.Report:
        """Build (and cache) the calibrated engine without loading it into a slot."""
        calib = extract_shard(shards.calibration, self.shard_root)
        model = resolve_model(onnx_path, _manifest(manifest_json))
        with self._work_lock:
            built = build_engine(model, profile=self.profile, cache=self.cache, backend=command.backend or "auto",
                                 precision=command.precision or "int8", calib_dir=calib,
                                 threads=self.settings.threads)  # fmt: skip
        built.engine.close()
        self._event("calibrated", model.manifest.version, {"engine_key": str(built.key)})
        return record_engine(fleet_pb2.Report(), built)

    def switch(self, model_version: str) -> str:
        """Make a loaded version active; returns the active version."""
        return self.slots.switch(model_version).version

    def rollback(self, to_version: str = "") -> str:
        """Return to ``to_version`` (or the previous active one); returns the active version."""
        return self.slots.rollback(to_version, reason="controller command").version

    def pipeline(self, command: fleet_pb2.Pipeline) -> str:
        """A controller's change to the video pipelines (``agent.stream.manager``); returns what
        was done. A spec the device refuses raises, naming the key (the command fails with it)."""
        return self.streams.apply(command.action, command.name, command.spec_json, command.source_json,
                                  command.source_id)  # fmt: skip
