"""``edgeloop agent probe | bench | serve | run``.

probe: this host's hardware profile, fingerprint and capabilities as JSON.
bench: build (or fetch) an engine and measure it - standalone, no controller.
serve: live inference over the Open Inference Protocol (gRPC), telemetry when MQTT is set.
run:   the fleet daemon (``agent.fleet.daemon``), a thin loop over these same pieces.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from google.protobuf import json_format

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    p = sub.add_parser("probe", help="print this host's hardware profile and fingerprint as JSON")
    p.add_argument("--out", type=Path, help="also write the JSON here")

    def model_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("model", type=Path, metavar="MODEL.onnx")
        p.add_argument(
            "--manifest", type=Path, help="manifest.json (default: the one beside the model, if any)"
        )
        p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
        p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
        p.add_argument("--device", help="cpu | gpu:N | dla:N (default: the backend's)")
        p.add_argument(
            "--calib", type=Path, metavar="DIR", help="calibration images for INT8 (ImageFolder or flat)"
        )
        p.add_argument("--calib-samples", type=int, default=256, help="calibration images used (at most)")
        p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
        p.add_argument("--threads", type=int, help="CPU threads (default: EDGELOOP_AGENT_THREADS or all)")
        p.add_argument("--cache-dir", type=Path, help="engine cache (default: $EDGELOOP_AGENT_DIR/engines)")

    b = sub.add_parser("bench", help="benchmark a model on this device (MLPerf LoadGen), standalone")
    model_args(b)
    b.add_argument("--eval", type=Path, metavar="DIR", help="labelled ImageFolder for accuracy")
    b.add_argument("--scenario", action="append", choices=["singlestream", "offline", "server"],
                   help="repeatable; default: all three")  # fmt: skip
    b.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    b.add_argument("--duration-ms", type=int, default=3000, help="minimum duration of each LoadGen run")
    b.add_argument("--batch", type=int, default=8, help="offline batch / largest server batch")
    b.add_argument("--server-latency-ms", type=float, help="server p99 bound (default 3x single-stream p99)")
    b.add_argument("--log-dir", type=Path, help="keep LoadGen's logs here")

    s = sub.add_parser("serve", help="serve live inference (Open Inference Protocol gRPC), standalone")
    model_args(s)
    s.add_argument("--host", default="0.0.0.0")
    s.add_argument("--port", type=int, default=8001)
    s.add_argument("--eval", type=Path, metavar="DIR", help="labelled images for the health check")
    s.add_argument("--accuracy-floor", type=float, default=0.0)
    s.add_argument("--device-id", default=socket.gethostname(), help="name in telemetry topics")
    s.add_argument("--mqtt-url", help="telemetry broker (default: EDGELOOP_MQTT_URL; unset = no telemetry)")
    s.add_argument("--metrics-interval", type=float, default=10.0)
    s.add_argument("--batch-delay-ms", type=float, default=0.0,
                   help="dynamic batching: wait up to this long to merge concurrent requests (0 = off)")  # fmt: skip
    s.add_argument("--max-batch", type=int, default=8, help="largest merged batch (dynamic batching)")

    r = sub.add_parser("run", help="the fleet daemon: register with the controller and follow its commands")
    try:
        daemon = importlib.import_module("agent.fleet.daemon")
    except Exception as exc:  # a missing or broken daemon must not break probe/bench/serve
        log.debug("fleet daemon unavailable: %s", exc)
        r.add_argument("rest", nargs=argparse.REMAINDER)
    else:
        daemon.add_arguments(r)


def _settings(args):
    from dataclasses import replace

    from agent.config import AgentSettings

    settings = AgentSettings.from_env()
    if getattr(args, "threads", None):
        settings = replace(settings, threads=args.threads)
    return settings


def _cache(args, settings):
    from agent.engine_cache import EngineCache

    return EngineCache(args.cache_dir or settings.cache_dir)


def cmd_probe(args) -> int:
    from agent.probe import capabilities, probe_hardware

    settings = _settings(args)
    profile = probe_hardware(threads=settings.threads, hardware_class=settings.hardware_class)
    data = {
        "fingerprint": profile.fingerprint,
        "hardware_class": profile.hardware_class,
        "profile": json_format.MessageToDict(profile, preserving_proto_field_name=True),
        "capabilities": [
            json_format.MessageToDict(
                c, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for c in capabilities(profile)
        ],  # fmt: skip
    }
    text = json.dumps(data, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


class _ProgressView:
    """A progress bar on stderr while the benchmark runs (log lines when not a terminal)."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

        self.console = Console(stderr=True)
        self.progress = Progress(TextColumn("{task.description:<13}"), BarColumn(), TaskProgressColumn(),
                                 TimeElapsedColumn(), console=self.console, transient=False)  # fmt: skip
        self.tasks: dict[str, int] = {}

    def __call__(self, stage: str, fraction: float) -> None:
        if stage not in self.tasks:
            self.tasks[stage] = self.progress.add_task(stage, total=1.0)
        self.progress.update(self.tasks[stage], completed=min(max(fraction, 0.0), 1.0))

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()


def cmd_bench(args) -> int:
    from agent.bench import SCENARIOS, BenchConfig, benchmark, render_table, report_to_dict

    settings = _settings(args)
    config = BenchConfig(
        scenarios=tuple(args.scenario or SCENARIOS),
        duration_ms=args.duration_ms,
        batch_size=args.batch,
        server_latency_ms=args.server_latency_ms,
        log_dir=args.log_dir,
    )
    with _ProgressView() as view:
        report = benchmark(args.model, manifest=args.manifest, backend=args.backend, precision=args.precision,
                           device=args.device, calib_dir=args.calib, calib_samples=args.calib_samples,
                           calibration_method=args.calib_method, eval_dir=args.eval, config=config,
                           settings=settings, cache=_cache(args, settings), progress=view)  # fmt: skip
    print(render_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report_to_dict(report), indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    failed = not report.scenarios or any(e.startswith("build:") for e in report.errors)
    return 1 if failed else 0


def cmd_serve(args) -> int:
    from agent.batching import DynamicBatcher
    from agent.dataplane import DataPlane
    from agent.probe import probe_hardware
    from agent.server import InferenceServer
    from agent.slots import ModelSlots
    from agent.stats import RequestStats
    from agent.telemetry import Telemetry, metrics_collector

    settings = _settings(args)
    profile = probe_hardware(threads=settings.threads, hardware_class=settings.hardware_class)
    mqtt_url = args.mqtt_url or settings.mqtt_url
    telemetry = None
    if mqtt_url:
        telemetry = Telemetry(mqtt_url, args.device_id, prefix=settings.telemetry_prefix,
                              hardware_class=profile.hardware_class).start()  # fmt: skip
    slots = ModelSlots(profile=profile, cache=_cache(args, settings), threads=settings.threads,
                       on_event=telemetry.event if telemetry else None)  # fmt: skip
    result = slots.deploy(args.model, args.manifest, backend=args.backend, precision=args.precision,
                          device=args.device, calib_dir=args.calib, eval_dir=args.eval,
                          accuracy_floor=args.accuracy_floor)  # fmt: skip
    if not result.ok:
        print(f"error: the model did not pass its health check: {result.reason}", file=sys.stderr)
        if telemetry:
            telemetry.stop()
        return 1
    stats = RequestStats()
    batcher = DynamicBatcher(args.max_batch, args.batch_delay_ms / 1000) if args.batch_delay_ms > 0 else None
    server = InferenceServer(DataPlane(slots, stats, batcher), host=args.host, port=args.port).start()
    if telemetry:
        telemetry.start_metrics(metrics_collector(slots, stats), args.metrics_interval)
    active = slots.active
    print(f"serving {active.name} ({active.version}, {active.backend}/{active.precision}) "
          f"on {args.host}:{server.port} - Open Inference Protocol gRPC", flush=True)  # fmt: skip
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop()
    if telemetry:
        telemetry.stop()
    return 0


def cmd_run(args) -> int:
    try:
        daemon = importlib.import_module("agent.fleet.daemon")
    except Exception as exc:
        print(
            f"error: the fleet daemon is not available in this build (agent.fleet.daemon: {exc})",
            file=sys.stderr,
        )
        return 2
    return int(daemon.run(args) or 0)


def run(args) -> int:
    from agent.errors import AgentError

    commands = {"probe": cmd_probe, "bench": cmd_bench, "serve": cmd_serve, "run": cmd_run}
    try:
        return commands[args.agent_command](args)
    except (AgentError, FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
