"""Benchmark an engine on this device with MLPerf LoadGen, and measure its accuracy.

Scenarios (LoadGen's, performance mode):
- ``singlestream``: one query at a time; latency p50/p90/p95/p99.
- ``offline``: every sample at once, run in batches; throughput.
- ``server``: Poisson arrivals at a target QPS with dynamic batching in the SUT; the reported
  result is the highest QPS whose p99 latency meets the bound, found by a short search.
- ``stream`` (not LoadGen's; ``BenchConfig.stream``): N live copies of a reference clip through
  the video pipeline on the same engine (``agent/stream/capacity.py``); one ScenarioResult per
  step and the capacity in ``Report.stream_capacity`` / ``stream_fps``.
``valid`` in a ScenarioResult means LoadGen's performance constraints (latency bound, minimum
duration and query count) were met. LoadGen's early-stopping criterion, which needs thousands
of queries, is not required of the short runs a device does between serving (it is recorded in
the log directory when ``log_dir`` is given).

``benchmark`` returns a ``fleet_pb2.Report``, the message the controller's policy reads, and
never raises for a failure of the model: failures are listed in ``report.errors``.
"""

from __future__ import annotations

import functools
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import json_format

from agent.backends.base import Engine
from agent.batching import DynamicBatcher
from agent.calibration import DEFAULT_CALIBRATION_SAMPLES, batch_size_for
from agent.config import AgentSettings
from agent.engine_cache import EngineCache
from agent.engines import BuiltEngine, build_engine, record_engine
from agent.errors import AgentError
from agent.evaluate import evaluate
from agent.model_spec import ResolvedModel, resolve_model
from agent.preprocess import ImageFolder, Preprocessor, feeds_for
from agent.probe import probe_hardware
from protos import artifact_pb2, fleet_pb2

log = logging.getLogger(__name__)

SCENARIOS = ("singlestream", "offline", "server")
Progress = Callable[[str, float], None]
_LOADGEN_LOCK = threading.Lock()  # LoadGen is process-global: one test at a time


@dataclass(frozen=True)
class BenchConfig:
    scenarios: tuple[str, ...] = SCENARIOS
    duration_ms: int = 3000  # minimum duration of one LoadGen run
    min_queries: int = 64  # minimum query count of one LoadGen run
    batch_size: int = 8  # offline batch, and the server's largest dynamic batch
    samples: int = 64  # performance sample set held in memory
    server_latency_ms: float | None = None  # p99 bound; None = 3 x single-stream p99 (>= 2 ms)
    server_search_steps: int = 5
    eval_limit: int | None = None  # evaluation images (None = all)
    log_dir: Path | None = None  # keep LoadGen's logs here (one folder per run)
    stream: StreamScenario | None = None  # also the stream scenario, after LoadGen's


@dataclass(frozen=True)
class StreamScenario:
    """The stream scenario's settings: the reference clip, the stream counts tried in order
    (stopping at the first that misses) and the seconds each step measures."""

    clip: Path
    counts: tuple[int, ...] = (1, 2, 4, 8)
    step_s: float = 10.0
    max_batch: int = 8


# ---------------------------------------------------------------- samples
def sample_set(
    model: ResolvedModel, engine: Engine, data_dir: Path | None, count: int
) -> list[dict[str, np.ndarray]]:
    """``count`` single-sample feeds (batch 1): preprocessed images from ``data_dir`` when given,
    else random tensors of the input spec (timing does not depend on pixel values)."""
    manifest = model.manifest
    if data_dir is not None:
        folder = ImageFolder.open(data_dir).subset(count)
        pre = Preprocessor.from_manifest(manifest)
        images = [pre.load(p)[None] for p, _ in folder.samples]
        return [feeds_for(manifest, img) for img in images]
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(min(count, 16)):
        feed = {}
        for spec in engine.inputs:
            shape = [
                1 if i == 0 else (d if d > 0 else _dim_default(manifest, spec.name, i))
                for i, d in enumerate(spec.shape)
            ]
            if np.issubdtype(spec.dtype, np.floating):
                feed[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                feed[spec.name] = rng.integers(0, 255, size=shape).astype(spec.dtype)
        samples.append(feed)
    return samples


def _dim_default(manifest: artifact_pb2.Manifest, name: str, axis: int) -> int:
    spec = next((t for t in manifest.inputs if t.name == name), None)
    p = manifest.preprocessing
    nchw = spec is None or (spec.layout or "NCHW") == "NCHW"
    dims = {1: 3, 2: p.height, 3: p.width} if nchw else {1: p.height, 2: p.width, 3: 3}
    return int(dims.get(axis) or 224)


class _LoadGenSUT:
    """LoadGen's system under test: every query goes to the agent's dynamic batcher with no
    waiting window (what is queued runs together, up to ``max_batch``; a static-batch engine gets
    padded batches of its fixed size), and LoadGen hears back from the batcher's thread."""

    def __init__(self, engine: Engine, samples: Sequence[dict[str, np.ndarray]], max_batch: int) -> None:
        self.engine = engine
        self.samples = samples
        self.errors: list[str] = []
        self.batcher = DynamicBatcher(max_batch=max_batch, max_delay_s=0.0)

    def issue(self, query_samples) -> None:
        for q in query_samples:
            future = self.batcher.submit(self.engine, self.samples[q.index % len(self.samples)])
            future.add_done_callback(functools.partial(self._complete, q.id))

    def _complete(self, query_id: int, future: Future) -> None:
        import mlperf_loadgen as lg

        exc = future.exception()
        if exc is not None and len(self.errors) < 5:  # recorded; LoadGen still gets its response
            self.errors.append(f"{type(exc).__name__}: {exc}")
        lg.QuerySamplesComplete([lg.QuerySampleResponse(query_id, 0, 0)])

    def stop(self) -> None:
        self.batcher.close()


def _parse_summary(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and value.strip():
            values.setdefault(key.strip(), value.strip())
    return values


def _ns_to_ms(values: dict[str, str], key: str) -> float:
    try:
        return float(values[key]) / 1e6
    except (KeyError, ValueError):
        return 0.0


def run_loadgen(
    engine: Engine,
    samples: Sequence[dict[str, np.ndarray]],
    scenario: str,
    config: BenchConfig,
    *,
    target_qps: float | None = None,
    latency_bound_ms: float | None = None,
    expected_latency_ms: float | None = None,
) -> tuple[fleet_pb2.ScenarioResult, dict[str, str], list[str]]:
    """One LoadGen run; returns (result, raw summary values, SUT errors)."""
    import mlperf_loadgen as lg

    max_batch = 1 if scenario == "singlestream" else config.batch_size
    settings = lg.TestSettings()
    settings.mode = lg.TestMode.PerformanceOnly
    settings.min_duration_ms = int(config.duration_ms)
    settings.min_query_count = int(config.min_queries)
    if scenario == "singlestream":
        settings.scenario = lg.TestScenario.SingleStream
        if expected_latency_ms:
            settings.single_stream_expected_latency_ns = int(expected_latency_ms * 1e6)
    elif scenario == "offline":
        settings.scenario = lg.TestScenario.Offline
        settings.offline_expected_qps = float(target_qps or 100.0)
    elif scenario == "server":
        settings.scenario = lg.TestScenario.Server
        settings.server_target_qps = float(target_qps or 10.0)
        settings.server_target_latency_ns = int((latency_bound_ms or 100.0) * 1e6)
    else:
        raise ValueError(f"unknown scenario {scenario!r}; choose from {SCENARIOS}")
    outdir = Path(tempfile.mkdtemp(prefix=f"edgeloop-loadgen-{scenario}-"))
    log_settings = lg.LogSettings()
    log_settings.log_output.outdir = str(outdir)
    log_settings.log_output.copy_summary_to_stdout = False
    log_settings.enable_trace = False
    with _LOADGEN_LOCK:
        under_test = _LoadGenSUT(engine, samples, max_batch)
        sut = lg.ConstructSUT(under_test.issue, lambda: None)
        qsl = lg.ConstructQSL(len(samples), len(samples), lambda s: None, lambda s: None)
        try:
            lg.StartTestWithLogSettings(sut, qsl, settings, log_settings)
        finally:
            under_test.stop()
            lg.DestroyQSL(qsl)
            lg.DestroySUT(sut)
    summary = (outdir / "mlperf_log_summary.txt").read_text(encoding="utf-8", errors="replace")
    if config.log_dir is not None:
        dest = Path(config.log_dir) / f"{scenario}-{int(time.time() * 1000)}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(outdir, dest)
    shutil.rmtree(outdir, ignore_errors=True)
    values = _parse_summary(summary)
    constraints = values.get("Performance constraints satisfied", "Yes").lower().startswith("yes")
    duration_ok = values.get("Min duration satisfied", "Yes").lower().startswith("yes")
    queries_ok = values.get("Min queries satisfied", "Yes").lower().startswith("yes")
    result = fleet_pb2.ScenarioResult(
        scenario=scenario,
        batch_size=1 if scenario == "singlestream" else (engine.fixed_batch or config.batch_size),
        latency_mean_ms=_ns_to_ms(values, "Mean latency (ns)"),
        latency_p50_ms=_ns_to_ms(values, "50.00 percentile latency (ns)"),
        latency_p90_ms=_ns_to_ms(values, "90.00 percentile latency (ns)"),
        latency_p95_ms=_ns_to_ms(values, "95.00 percentile latency (ns)"),
        latency_p99_ms=_ns_to_ms(values, "99.00 percentile latency (ns)"),
        target_latency_ms=latency_bound_ms or 0.0,
        valid=constraints and duration_ok and queries_ok and not under_test.errors,
    )
    if scenario == "offline":
        result.throughput_fps = float(values.get("Samples per second", 0) or 0)
    elif scenario == "server":
        result.throughput_fps = float(values.get("Completed samples per second", 0) or 0)
    else:
        qps = values.get("QPS w/o loadgen overhead") or values.get("QPS w/ loadgen overhead")
        result.throughput_fps = (
            float(qps) if qps else (1000.0 / result.latency_mean_ms if result.latency_mean_ms else 0.0)
        )
    return result, values, under_test.errors


def _quick_latency_ms(
    engine: Engine, samples: Sequence[dict[str, np.ndarray]], batch: int, repeats: int = 5
) -> float:
    n = engine.fixed_batch or batch
    picked = [samples[i % len(samples)] for i in range(n)]
    feeds = {name: np.concatenate([s[name] for s in picked]) for name in picked[0]}
    engine.run(feeds)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        engine.run(feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000)


def server_search(
    engine: Engine,
    samples: Sequence[dict[str, np.ndarray]],
    config: BenchConfig,
    latency_bound_ms: float,
    qps_ceiling: float,
    progress: Callable[[float], None] | None = None,
) -> tuple[fleet_pb2.ScenarioResult, list[str]]:
    """Highest QPS whose p99 latency meets ``latency_bound_ms``: bisection in log space between
    a QPS known to pass and one known to fail, ``server_search_steps`` LoadGen runs."""
    lo, hi = 0.0, max(qps_ceiling * 1.2, 1.0)
    best: fleet_pb2.ScenarioResult | None = None
    last: fleet_pb2.ScenarioResult | None = None
    errors: list[str] = []
    qps = max(qps_ceiling * 0.6, 0.5)
    for step in range(config.server_search_steps):
        result, _, errs = run_loadgen(
            engine, samples, "server", config, target_qps=qps, latency_bound_ms=latency_bound_ms
        )
        errors.extend(errs)
        last = result
        log.info("server @ %.1f qps: p99 %.2f ms (bound %.2f) -> %s", qps, result.latency_p99_ms, latency_bound_ms,
                 "ok" if result.valid else "fails")  # fmt: skip
        if result.valid:
            lo = qps
            if best is None or result.throughput_fps > best.throughput_fps:
                best = result
        else:
            hi = qps
        qps = math.sqrt(lo * hi) if lo > 0 else hi / 4
        if progress:
            progress((step + 1) / config.server_search_steps)
    return (best or last), errors  # type: ignore[return-value]


# ---------------------------------------------------------------- memory
class PeakMemory:
    """Samples this process's RSS in a thread; ``peak`` is the largest seen."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        import psutil

        proc = psutil.Process()
        while True:
            self.peak = max(self.peak, int(proc.memory_info().rss))
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> PeakMemory:
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


# ---------------------------------------------------------------- the whole benchmark
def benchmark_engine(
    built: BuiltEngine,
    *,
    eval_dir: str | Path | None = None,
    config: BenchConfig = BenchConfig(),
    progress: Progress | None = None,
    report: fleet_pb2.Report | None = None,
) -> fleet_pb2.Report:
    """Accuracy and the LoadGen scenarios for an engine that is already built."""

    def say(stage: str, fraction: float) -> None:
        if progress:
            progress(stage, fraction)

    report = report or fleet_pb2.Report()
    engine, model = built.engine, built.model
    if eval_dir is not None:
        say("accuracy", 0.0)
        try:
            report.accuracy.update(
                evaluate(
                    engine,
                    model.manifest,
                    eval_dir,
                    batch_size=config.batch_size,
                    limit=config.eval_limit,
                    progress=lambda done, total: say("accuracy", done / max(total, 1)),
                )  # fmt: skip
            )
        except (AgentError, ValueError, OSError) as exc:
            report.errors.append(f"accuracy: {exc}")
    samples = sample_set(model, engine, Path(eval_dir) if eval_dir else None, config.samples)
    batch = batch_size_for(model.manifest, config.batch_size)
    single: fleet_pb2.ScenarioResult | None = None
    offline: fleet_pb2.ScenarioResult | None = None
    for scenario in config.scenarios:
        say(scenario, 0.0)
        try:
            if scenario == "singlestream":
                # LoadGen sizes the run from the expectation: err on the fast side so the run
                # lasts at least the minimum duration.
                expected = 0.5 * _quick_latency_ms(engine, samples, 1)
                single, _, errs = run_loadgen(engine, samples, scenario, config, expected_latency_ms=expected)
                result = single
            elif scenario == "offline":
                estimate = 1.5 * batch * 1000.0 / max(_quick_latency_ms(engine, samples, batch), 1e-3)
                offline, _, errs = run_loadgen(engine, samples, scenario, config, target_qps=estimate)
                result = offline
            elif scenario == "server":
                one = single.latency_p99_ms if single else _quick_latency_ms(engine, samples, 1)
                bound = config.server_latency_ms or max(3.0 * one, 2.0)
                ceiling = offline.throughput_fps if offline else batch * 1000.0 / max(
                    _quick_latency_ms(engine, samples, batch), 1e-3)  # fmt: skip
                result, errs = server_search(engine, samples, config, bound, ceiling,
                                             progress=lambda f: say("server", f))  # fmt: skip
            else:
                raise ValueError(f"unknown scenario {scenario!r}; choose from {SCENARIOS}")
        except (AgentError, ValueError, RuntimeError) as exc:
            report.errors.append(f"{scenario}: {exc}")
            continue
        report.scenarios.append(result)
        report.errors.extend(f"{scenario}: {e}" for e in errs)
        say(scenario, 1.0)
    if config.stream is not None:
        say("stream", 0.0)
        try:
            run_stream_scenario(built, config.stream, report)
        except (AgentError, ValueError, OSError, RuntimeError) as exc:
            report.errors.append(f"stream: {exc}")
        say("stream", 1.0)
    return report


class _Lent:
    """The benchmark's engine lent to the stream pipeline: each step's pipeline closes its engine
    when it stops, and this one belongs to the benchmark, which closes it at the end."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str):  # noqa: ANN204 - the engine's own attributes
        return getattr(self._engine, name)

    def close(self) -> None:
        pass


def run_stream_scenario(built: BuiltEngine, stream: StreamScenario, report: fleet_pb2.Report) -> dict:
    """The stream scenario on ``built``'s engine: one ``stream`` ScenarioResult per step, and the
    capacity in the report. Returns the capacity dict (``agent.stream.capacity``)."""
    from agent.stream.capacity import clip_fps, stream_capacity

    clip = Path(stream.clip)
    fps = clip_fps(clip)
    lent = _Lent(built.engine)
    result = stream_capacity(clip, fps, lambda spec: (lent, built.model.manifest),
                             [f"model.path={built.model.onnx_path}"], steps=stream.counts,
                             duration_s=stream.step_s, max_batch=stream.max_batch)  # fmt: skip
    for step in result["steps"]:
        report.scenarios.append(
            fleet_pb2.ScenarioResult(
                scenario="stream",
                batch_size=stream.max_batch,
                throughput_fps=round(step["mean_stream_fps"] * step["streams"], 2),
                latency_p50_ms=step["latency_p50_ms"],
                latency_p99_ms=step["latency_p99_ms"],
                valid=step["meets"],
                streams=step["streams"],
                stream_fps=fps,
                min_stream_fps=step["min_stream_fps"],
                dropped_frames=step["dropped"],
            )
        )
    report.stream_capacity = result["capacity"]
    report.stream_fps = fps
    return result


def benchmark(
    onnx_path: str | Path,
    *,
    manifest: artifact_pb2.Manifest | str | Path | None = None,
    backend: str = "auto",
    precision: str = "fp32",
    device: str | None = None,
    calib_dir: str | Path | None = None,
    calib_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    calibration_method: str = "minmax",
    eval_dir: str | Path | None = None,
    config: BenchConfig = BenchConfig(),
    settings: AgentSettings | None = None,
    profile: fleet_pb2.HardwareProfile | None = None,
    cache: EngineCache | None = None,
    progress: Progress | None = None,
    artifact_id: str = "",
) -> fleet_pb2.Report:
    """Build (or fetch) the engine, then measure it. Never raises for a model that fails to
    build or run: the report lists the errors."""
    settings = settings or AgentSettings.from_env()
    profile = profile or probe_hardware(threads=settings.threads, hardware_class=settings.hardware_class)
    cache = cache or EngineCache(settings.cache_dir)
    report = fleet_pb2.Report(
        artifact_id=artifact_id,
        backend=backend,
        precision=precision,
        hardware_fingerprint=profile.fingerprint,
    )
    with PeakMemory() as memory:
        try:
            if progress:
                progress("build", 0.0)
            model = resolve_model(onnx_path, manifest)
            report.model_version = model.manifest.version
            built = build_engine(model, profile=profile, cache=cache, backend=backend, precision=precision,
                                 device=device, calib_dir=calib_dir, calib_samples=calib_samples,
                                 calibration_method=calibration_method, threads=settings.threads)  # fmt: skip
        except (AgentError, ValueError, OSError) as exc:
            report.errors.append(f"build: {exc}")
            return report
        record_engine(report, built)
        report.errors.extend(f"warning: {w}" for w in model.warnings)
        if progress:
            progress("build", 1.0)
        try:
            benchmark_engine(built, eval_dir=eval_dir, config=config, progress=progress, report=report)
            engine_memory = built.engine.memory_bytes()
        finally:
            built.engine.close()
    report.peak_memory_bytes = max(memory.peak, engine_memory)
    return report


# ---------------------------------------------------------------- output
def report_to_dict(report: fleet_pb2.Report) -> dict:
    return json_format.MessageToDict(
        report, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def render_table(report: fleet_pb2.Report) -> str:
    """A plain-text table of the report, as the CLI prints it."""
    lines = [
        f"model {report.model_version}  backend {report.backend}  precision {report.precision}",
        f"engine {report.engine_key}",
        (
            f"build {report.build_time_s:.2f}s  calibration {report.calibration_time_s:.2f}s  "
            if report.build_time_s
            else "engine from the cache  "
        )
        + f"peak memory {report.peak_memory_bytes / 2**20:.1f} MiB",
    ]
    if report.accuracy:
        lines.append("accuracy " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(report.accuracy.items())))
    header = f"{'scenario':<13}{'batch':>6}{'img/s':>10}{'mean ms':>9}{'p50':>8}{'p90':>8}{'p99':>8}{'bound':>8}  valid"
    lines += [header, "-" * len(header)]
    for s in report.scenarios:
        if s.scenario == "stream":
            continue
        bound = f"{s.target_latency_ms:.1f}" if s.target_latency_ms else "-"
        lines.append(
            f"{s.scenario:<13}{s.batch_size:>6}{s.throughput_fps:>10.1f}{s.latency_mean_ms:>9.2f}"
            f"{s.latency_p50_ms:>8.2f}{s.latency_p90_ms:>8.2f}{s.latency_p99_ms:>8.2f}{bound:>8}  {'yes' if s.valid else 'NO'}"
        )
    steps = [s for s in report.scenarios if s.scenario == "stream"]
    if report.stream_fps:
        lines.append(f"stream scenario ({report.stream_fps:g} FPS live per stream): capacity "
                     f"{report.stream_capacity} stream{'s' if report.stream_capacity != 1 else ''}")  # fmt: skip
        header = f"{'streams':>8}{'slowest fps':>13}{'total fps':>11}{'dropped':>9}{'p50 ms':>8}{'p99 ms':>8}  meets"
        lines += [header, "-" * len(header)]
        for s in steps:
            lines.append(f"{s.streams:>8}{s.min_stream_fps:>13.2f}{s.throughput_fps:>11.1f}{s.dropped_frames:>9}"
                         f"{s.latency_p50_ms:>8.0f}{s.latency_p99_ms:>8.0f}  {'yes' if s.valid else 'no'}")  # fmt: skip
    lines += [f"! {e}" for e in report.errors]
    return "\n".join(lines)


__all__ = [
    "BenchConfig",
    "PeakMemory",
    "SCENARIOS",
    "StreamScenario",
    "benchmark",
    "benchmark_engine",
    "render_table",
    "report_to_dict",
    "run_loadgen",
    "run_stream_scenario",
    "sample_set",
    "server_search",
]
