"""``edgeloop controller serve``: the controller in one process (gRPC, REST, dashboard, engine)."""

from __future__ import annotations

import argparse
import logging
import signal
from pathlib import Path

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="controller_command", metavar="ACTION", required=True)
    serve = sub.add_parser("serve", help="run the controller (gRPC fleet service, REST API, dashboard)")
    serve.add_argument("--db", help="SQLAlchemy URL (default: SQLite in the data dir; postgres://... works)")
    serve.add_argument("--grpc-port", type=int, help="gRPC port for agents (default 50051)")
    serve.add_argument("--http-port", type=int, help="REST API and dashboard port (default 8000)")
    serve.add_argument("--host", help="address to listen on for both (default 0.0.0.0)")
    serve.add_argument("--mqtt", help="broker URL mqtt://host:port (default: start a local broker)")
    serve.add_argument(
        "--no-broker", action="store_true", help="no local broker and no telemetry when --mqtt is unset"
    )
    serve.add_argument("--data-dir", help="artifacts, keys, tokens, the SQLite file")
    serve.add_argument("--telemetry-prefix", help="MQTT topic prefix (default edgeloop)")
    serve.add_argument(
        "--mqtt-password-file", type=Path, help="password of the --mqtt user (kept out of `ps`)"
    )
    serve.add_argument(
        "--enroll-port", type=int, help="TLS enrolment port for agents (default: gRPC port + 1)"
    )
    serve.add_argument("--tls-name", action="append", dest="tls_names",
                       help="a DNS name or IP the gRPC certificate also carries (repeatable)")  # fmt: skip
    serve.add_argument("--insecure", action="store_true",
                       help="plaintext gRPC without TLS or client certificates (a lab only; agents need --insecure too)")  # fmt: skip
    migrate = sub.add_parser("migrate", help="run the database migrations (alembic upgrade head) and exit")
    migrate.add_argument("--db")
    migrate.add_argument("--data-dir")


def _settings(args: argparse.Namespace):  # noqa: ANN202
    from controller.core.config import get_settings

    overrides = {"db_url": args.db, "data_dir": args.data_dir}
    if args.controller_command == "serve":
        overrides |= {
            "grpc_port": args.grpc_port,
            "http_port": args.http_port,
            "mqtt_url": args.mqtt,
            "telemetry_prefix": args.telemetry_prefix,
            "grpc_host": args.host,
            "http_host": args.host,
            "mqtt_password_file": args.mqtt_password_file,
            "enroll_port": args.enroll_port,
            "tls_names": tuple(args.tls_names) if args.tls_names else None,
            "insecure": True if args.insecure else None,
        }
        if args.no_broker:
            overrides["start_broker"] = False
    return get_settings(**overrides)


def _http_port_free(host: str, port: int) -> bool:
    """Checked before anything starts, so a taken HTTP port fails at once with the reason (uvicorn
    would only find out after the gRPC side is up). Same options as uvicorn: SO_REUSEADDR, no
    SO_REUSEPORT, so a port another server listens on is refused."""
    import socket

    if not port:
        return True
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def run(args: argparse.Namespace) -> int:
    logging.getLogger("alembic").setLevel(logging.WARNING)
    settings = _settings(args)
    if args.controller_command == "migrate":
        from controller.db import make_engine, migrate

        migrate(make_engine(settings.database_url))
        return 0
    import sys

    import uvicorn

    from controller.runtime import Controller
    from protos.ports import PortInUse
    from protos.redact import redact_url

    # the REST API shares the GIL with the gRPC loop streaming artifacts: hand it over more often
    # so API latency stays low during a large rollout (measured in benchmarks/fleet_scale.py)
    sys.setswitchinterval(0.001)
    if not _http_port_free(settings.http_host, settings.http_port):
        print(f"error: cannot listen on {settings.http_host}:{settings.http_port} (HTTP): the port is in use",
              file=sys.stderr)  # fmt: skip
        return 1
    try:
        ctl = Controller(settings).start()
    except PortInUse as exc:
        print(f"error: {exc} (gRPC)", file=sys.stderr)
        return 1
    print(
        f"edgeloop controller: gRPC {settings.grpc_host}:{ctl.grpc_port}, "
        f"HTTP http://{settings.http_host}:{settings.http_port} (dashboard /dashboard#token=..., docs /docs)\n"
        f"  database  {redact_url(settings.database_url)}\n"
        f"  telemetry {redact_url(ctl.public_mqtt_url) or 'off'}\n"
        f"  API token and enrollment token: EDGELOOP_API_TOKEN / EDGELOOP_ENROLLMENT_TOKEN "
        f"(or the files api_token, enrollment_token in {settings.data_dir})\n"
        + (
            "  gRPC WITHOUT TLS (--insecure): agents need --insecure\n"
            if settings.insecure
            else f"  enrol an agent: edgeloop agent run --controller HOST:{ctl.grpc_port} "
            f"--enroll HOST:{ctl.grpc.enroll_port if ctl.grpc else 0} --ca-fingerprint {ctl.ca_fingerprint} "
            f"--enrollment-token-file FILE\n"
        ),
        flush=True,
    )
    # uvicorn stops on SIGTERM and then re-raises it to the handler it found: let that be ours
    # (a SystemExit), so the finally below stops the broker and the workers instead of the
    # default action ending the process before they are stopped
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        uvicorn.run(ctl.app(), host=settings.http_host, port=settings.http_port, log_level="info")
    finally:
        ctl.stop()
    return 0
