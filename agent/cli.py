"""``edgeloop agent probe | bench | serve | run | stream``.

probe: this host's hardware profile, fingerprint and capabilities as JSON.
bench: build (or fetch) an engine and measure it - standalone, no controller.
serve: one model over the Open Inference Protocol (gRPC), telemetry when MQTT is set.
run:   the fleet daemon (``agent.fleet.daemon``): register with the controller and follow it.
stream: a video analytics pipeline from a spec (``agent.stream``, docs/stream.md).

``serve`` and ``run`` build the same ``AgentRuntime`` (engine cache, model slots, gRPC server,
dynamic batching, telemetry) from ``AgentSettings``: the environment with the flags given over it.
Flags whose ``dest`` is a settings field go to the settings; a flag left out is None.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import TaskID

import argparse
import json
import logging
import signal
import socket
import sys
import threading
from pathlib import Path

from google.protobuf import json_format

from agent.bench import SCENARIOS, BenchConfig, StreamScenario, benchmark, render_table, report_to_dict
from agent.config import AgentSettings, parse_tags
from agent.errors import AgentError
from agent.fleet import daemon
from agent.probe import capabilities, probe_hardware
from agent.runtime import AgentRuntime
from protos.ports import PortInUse

log = logging.getLogger(__name__)


def _threads(text: str) -> int | None:
    number = int(text)
    if number < 0:
        raise argparse.ArgumentTypeError(f"threads must be >= 0, got {number}")
    return number or None  # 0 = not set: the environment's, else every core


def _sizes(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"batch sizes must be comma-separated integers, got {text!r}"
        ) from exc


def _common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads, help="CPU threads (default: EDGELOOP_AGENT_THREADS or all)")


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", type=Path, metavar="MODEL.onnx")
    p.add_argument("--manifest", type=Path, help="manifest.json (default: the one beside the model, if any)")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    p.add_argument("--device", help="cpu | gpu:N | dla:N (default: the backend's)")
    p.add_argument(
        "--calib", type=Path, metavar="DIR", help="calibration images for INT8 (ImageFolder or flat)"
    )
    p.add_argument("--calib-samples", type=int, default=256, help="calibration images used (at most)")
    p.add_argument("--calib-method", default="minmax", choices=["minmax", "entropy", "percentile"])
    _common_args(p)
    p.add_argument("--cache-dir", dest="engines_dir", type=Path,
                   help="engine cache (default: $EDGELOOP_AGENT_DIR/engines)")  # fmt: skip


def _serving_args(p: argparse.ArgumentParser) -> None:
    """Live inference and telemetry: the same flags for ``serve`` and ``run``."""
    p.add_argument("--batch-delay-ms", dest="batch_delay_ms", type=float,
                   help="dynamic batching: wait up to this long to merge concurrent requests (default 0 = off)")  # fmt: skip
    p.add_argument(
        "--max-batch", dest="max_batch", type=int, help="largest merged batch (dynamic batching; default 8)"
    )
    p.add_argument("--metrics-interval", dest="metrics_interval_s", type=float,
                   help="seconds between telemetry metrics (default 10)")  # fmt: skip
    p.add_argument("--http-port", dest="http_port", type=int,
                   help="Open Inference Protocol HTTP/REST and /metrics (default 8000; 0 = a free one; -1 = off)")  # fmt: skip
    p.add_argument("--serve-token-file", dest="serve_token_file", type=Path,
                   help="file holding the bearer token the inference ports demand "
                        "(default: EDGELOOP_SERVE_TOKEN_FILE, else EDGELOOP_SERVE_TOKEN; unset = open)")  # fmt: skip
    p.add_argument("--max-request-batch", dest="max_request_batch", type=int,
                   help="largest batch one request may carry (default 64; a manifest's max_batch lowers it)")  # fmt: skip
    p.add_argument("--max-request-bytes", dest="max_request_bytes", type=int,
                   help="largest request (tensor bytes; default 64 MiB)")  # fmt: skip
    p.add_argument("--model-repository", dest="model_repository", type=Path, metavar="DIR",
                   help="models the repository extension may load: DIR/NAME/model.onnx (+ manifest.json)")  # fmt: skip
    p.add_argument("--preferred-batch-sizes", dest="preferred_batch_sizes", type=_sizes,
                   help="dynamic batching: comma-separated batch sizes that run at once when reached")  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="agent_command", metavar="ACTION", required=True)

    p = sub.add_parser("probe", help="print this host's hardware profile and fingerprint as JSON")
    p.add_argument("--out", type=Path, help="also write the JSON here")

    b = sub.add_parser("bench", help="benchmark a model on this device (MLPerf LoadGen), standalone")
    _model_args(b)
    b.add_argument("--eval", type=Path, metavar="DIR", help="labelled ImageFolder for accuracy")
    b.add_argument("--scenario", action="append", choices=["singlestream", "offline", "server"],
                   help="repeatable; default: all three")  # fmt: skip
    b.add_argument("--json", type=Path, metavar="OUT", help="write the report as JSON")
    b.add_argument("--duration-ms", type=int, default=3000, help="minimum duration of each LoadGen run")
    b.add_argument("--batch", type=int, default=8, help="offline batch / largest server batch")
    b.add_argument("--server-latency-ms", type=float, help="server p99 bound (default 3x single-stream p99)")
    b.add_argument("--log-dir", type=Path, help="keep LoadGen's logs here")
    b.add_argument("--stream-clip", type=Path, metavar="CLIP",
                   help="also the stream scenario: N live copies of this clip through the video pipeline")  # fmt: skip
    b.add_argument("--streams", default="1,2,4,8", help="stream scenario: the stream counts tried, in order")
    b.add_argument("--stream-duration", type=float, default=10.0, help="stream scenario: seconds per step")

    # no abbreviated flags: `--serve-token SECRET` must fail, not be read as --serve-token-file
    s = sub.add_parser("serve", help="serve live inference (Open Inference Protocol gRPC + HTTP/REST), standalone",
                       allow_abbrev=False)  # fmt: skip
    _model_args(s)
    s.add_argument("--host", dest="serve_host",
                   help="address to listen on (default: EDGELOOP_SERVE_HOST or 127.0.0.1; 0.0.0.0 opens it)")  # fmt: skip
    s.add_argument("--port", dest="serve_port", type=int, help="gRPC port (default 8001; 0 = a free one)")
    s.add_argument("--eval", type=Path, metavar="DIR", help="labelled images for the health check")
    s.add_argument("--accuracy-floor", type=float, default=0.0)
    s.add_argument("--device-id", default=socket.gethostname(), help="name in telemetry topics")
    s.add_argument("--mqtt-url", dest="mqtt_url",
                   help="telemetry broker (default: EDGELOOP_MQTT_URL; unset = no telemetry)")  # fmt: skip
    _serving_args(s)

    r = sub.add_parser("run", help="the fleet daemon: register with the controller and follow its commands",
                       allow_abbrev=False)  # fmt: skip
    r.add_argument(
        "--controller",
        help="HOST:PORT of the controller's gRPC, or several comma-separated (the agent moves to the next "
        "when its controller stops answering; default: EDGELOOP_CONTROLLER or 127.0.0.1:50051)",
    )
    r.add_argument("--agent-dir", dest="agent_dir", type=Path,
                   help="credentials, engine cache, model slots (default: EDGELOOP_AGENT_DIR or ~/.edgeloop/agent)")  # fmt: skip
    r.add_argument("--enrollment-token-file", dest="enrollment_token_file", type=Path,
                   help="file holding the enrolment token (default: EDGELOOP_ENROLLMENT_TOKEN); "
                        "a token on the command line would be visible in `ps`")  # fmt: skip
    r.add_argument("--enroll", dest="enroll_target",
                   help="HOST:PORT of the controller's TLS enrolment port, one per --controller address "
                        "(default: each --controller port + 1)")  # fmt: skip
    r.add_argument("--ca-fingerprint", dest="ca_fingerprint",
                   help="sha256:<hex> of the controller CA, printed by `edgeloop controller serve` "
                        "(default: EDGELOOP_CA_FINGERPRINT); the agent enrols with no other controller")  # fmt: skip
    r.add_argument(
        "--ca-file", dest="ca_file", type=Path, help="the controller CA (PEM) instead of its fingerprint"
    )
    r.add_argument("--insecure", action="store_true", default=None,
                   help="plaintext gRPC without certificates (only against a controller started with --insecure)")  # fmt: skip
    r.add_argument("--name", help="device name (default: hostname)")
    r.add_argument("--tags", type=parse_tags, help="comma-separated tags (default: EDGELOOP_AGENT_TAGS)")
    r.add_argument("--hardware-class", dest="hardware_class", type=lambda text: text or None,
                   help="override the probed hardware class (default: EDGELOOP_HARDWARE_CLASS)")  # fmt: skip
    _common_args(r)
    r.add_argument("--mqtt", dest="mqtt_url",
                   help="telemetry broker (default: EDGELOOP_MQTT_URL, else the one the controller names)")  # fmt: skip
    r.add_argument("--serve-host", dest="serve_host",
                   help="address of the inference ports (default: EDGELOOP_SERVE_HOST or 127.0.0.1; 0.0.0.0 opens it)")  # fmt: skip
    r.add_argument("--serve-port", dest="serve_port", type=int,
                   help="live inference (Open Inference Protocol gRPC; default 8001); -1 = off")  # fmt: skip
    _serving_args(r)

    v = sub.add_parser("stream", help="run a video analytics pipeline from a spec (docs/stream.md)")
    v.add_argument("-e", "--spec", dest="pipeline_spec", type=Path, required=True, metavar="PIPELINE.yaml",
                   help="pipeline spec (every key: agent/specs/pipeline.yaml)")  # fmt: skip
    v.add_argument(
        "overrides", nargs="*", metavar="key=value", help="override spec keys (sources.0.uri=cam.mp4)"
    )
    v.add_argument("--agent-dir", dest="agent_dir", type=Path,
                   help="model slots (model.path: active) and engine cache (default: EDGELOOP_AGENT_DIR)")  # fmt: skip
    v.add_argument("--device-id", default=socket.gethostname(), help="name in telemetry topics")
    v.add_argument(
        "--mqtt-url", dest="mqtt_url", help="broker for the mqtt sink (default: EDGELOOP_MQTT_URL)"
    )
    v.add_argument(
        "--duration", type=float, default=0.0, help="stop after this many seconds (0: when files end)"
    )
    v.add_argument("--stats-json", type=Path, metavar="OUT", help="write the pipeline's final metrics here")
    _common_args(v)


def settings_from(args: argparse.Namespace) -> AgentSettings:
    """The environment's settings with the flags given on the command line over them (a token
    file is read here: the token itself never is an argument)."""
    values = dict(vars(args))
    token_file = values.pop("enrollment_token_file", None)
    if token_file is not None:
        values["enrollment_token"] = token_file.expanduser().read_text(encoding="utf-8").strip()
    return AgentSettings.from_env().override(**values)


def cmd_probe(args) -> int:
    settings = settings_from(args)
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
        self.tasks: dict[str, TaskID] = {}  # rich task ids

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
    from agent.engine_cache import EngineCache

    settings = settings_from(args)
    config = BenchConfig(
        scenarios=tuple(args.scenario or SCENARIOS),
        duration_ms=args.duration_ms,
        batch_size=args.batch,
        server_latency_ms=args.server_latency_ms,
        log_dir=args.log_dir,
        stream=StreamScenario(
            args.stream_clip, tuple(int(n) for n in args.streams.split(",")), args.stream_duration
        )
        if args.stream_clip
        else None,
    )
    with _ProgressView() as view:
        report = benchmark(args.model, manifest=args.manifest, backend=args.backend, precision=args.precision,
                           device=args.device, calib_dir=args.calib, calib_samples=args.calib_samples,
                           calibration_method=args.calib_method, eval_dir=args.eval, config=config,
                           settings=settings, cache=EngineCache(settings.cache_dir), progress=view)  # fmt: skip
    print(render_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report_to_dict(report), indent=2) + "\n", encoding="utf-8")
        print(f"report written to {args.json}")
    failed = not report.scenarios or any(e.startswith(("build:", "stream:")) for e in report.errors)
    return 1 if failed else 0


def _wait_for_a_stop_signal() -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    done.wait()


def cmd_serve(args) -> int:
    settings = settings_from(args)
    if not settings.serves_grpc:
        raise ValueError(f"serve needs a port to listen on (--port {settings.serve_port})")
    runtime = AgentRuntime(settings, remember_slots=False)
    try:
        runtime.attach_telemetry(args.device_id)  # before the deploy, so its events go out
        result = runtime.slots.deploy(args.model, args.manifest, backend=args.backend, precision=args.precision,
                                      device=args.device, calib_dir=args.calib, eval_dir=args.eval,
                                      accuracy_floor=args.accuracy_floor)  # fmt: skip
        if not result.ok:
            print(f"error: the model did not pass its health check: {result.reason}", file=sys.stderr)
            return 1
        runtime.start()
        active = runtime.slots.active
        if active is None:
            print("error: the runtime started without a served model", file=sys.stderr)
            return 1
        ports = [f"gRPC :{runtime.grpc_server.port}"] if runtime.grpc_server else []
        ports += [f"HTTP/REST :{runtime.http_server.port}"] if runtime.http_server else []
        print(f"serving {active.name} ({active.version}, {active.backend}/{active.precision}) "
              f"on {settings.serve_host} - Open Inference Protocol {', '.join(ports) or '(no port)'}",
              flush=True)  # fmt: skip
        _wait_for_a_stop_signal()
    finally:
        runtime.close()
    return 0


def cmd_run(args) -> int:
    settings = settings_from(args)
    with AgentRuntime(settings) as runtime:
        return daemon.run(settings, runtime)


def cmd_stream(args) -> int:
    import time

    from agent.stream.pipeline import Pipeline
    from agent.stream.spec import load_pipeline_spec

    spec = load_pipeline_spec(args.pipeline_spec, args.overrides)
    settings = settings_from(args)
    runtime = AgentRuntime(settings, deploy_bench=None)
    try:
        if spec.model.path == "active":
            runtime.slots.restore()
        runtime.attach_telemetry(args.device_id)
        pipeline = Pipeline(spec, slots=runtime.slots, build=runtime.streams.build,
                            telemetry=lambda: runtime.telemetry).start()  # fmt: skip
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        if pipeline.view is not None:
            print(f"annotated view: {pipeline.view.url}", flush=True)
        started = time.monotonic()
        everything_live = all(s.is_live() or s.loop for s in spec.sources)
        while not stop.wait(0.2):
            if args.duration and time.monotonic() - started >= args.duration:
                break
            if not args.duration and not everything_live and pipeline.idle():
                break
        stats = pipeline.stats()
        pipeline.stop()
    finally:
        runtime.close()
    text = json.dumps(stats, indent=2)
    print(text)
    if args.stats_json:
        args.stats_json.parent.mkdir(parents=True, exist_ok=True)
        args.stats_json.write_text(text + "\n", encoding="utf-8")
    failed = [s for s in stats["sources"] if s["state"] == "failed"]
    for s in failed:
        print(f"error: {s['last_error']}", file=sys.stderr)
    return 1 if failed else 0


def run(args) -> int:
    from agent.stream.spec import SpecError

    commands = {
        "probe": cmd_probe,
        "bench": cmd_bench,
        "serve": cmd_serve,
        "run": cmd_run,
        "stream": cmd_stream,
    }
    try:
        return commands[args.agent_command](args)
    except (AgentError, FileNotFoundError, ValueError, SpecError, PortInUse) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
