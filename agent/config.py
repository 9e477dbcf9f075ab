"""The agent's settings: the one module that reads environment variables.

Every other agent module takes values as arguments. ``AgentSettings.from_env()`` reads the
environment (names of docs/CONVENTIONS.md); the CLI lays the flags given on the command line
over it with ``override(**vars(args))`` (its flags' ``dest`` are the field names below, and a
flag left out is None), and passes the result down, so tests build ``AgentSettings(...)``
directly and never patch the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PREFIX = "edgeloop"
DEFAULT_CONTROLLER = "127.0.0.1:50051"
DEFAULT_SERVE_PORT = 8001  # Triton's: gRPC 8001, HTTP/REST 8000
DEFAULT_HTTP_PORT = 8000
DEFAULT_SERVE_HOST = "127.0.0.1"  # loopback unless the operator opens it (--host / --serve-host)
DEFAULT_MAX_REQUEST_BATCH = 64
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024


def default_agent_dir() -> Path:
    return Path.home() / ".edgeloop" / "agent"


def _int_or_none(value: str | None, name: str) -> int | None:
    if value is None or value.strip() == "":
        return None
    try:
        number = int(value)
    except ValueError as exc:
        raise ValueError(f"{name} must be an integer, got {value!r}") from exc
    if number < 1:
        raise ValueError(f"{name} must be >= 1, got {number}")
    return number


def parse_tags(text: str) -> tuple[str, ...]:
    """``"a, b,,c"`` -> ``("a", "b", "c")``: tags as EDGELOOP_AGENT_TAGS and ``--tags`` write them."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


@dataclass(frozen=True)
class AgentSettings:
    # where the agent keeps its state (EDGELOOP_AGENT_DIR): credentials, engines/, slots/, shards/
    agent_dir: Path = field(default_factory=default_agent_dir)
    engines_dir: Path | None = None  # engine cache (--cache-dir); None = agent_dir/engines
    threads: int | None = None  # EDGELOOP_AGENT_THREADS: CPU threads for engines; None = all
    hardware_class: str | None = None  # EDGELOOP_HARDWARE_CLASS: operator override of the probe's
    # telemetry
    mqtt_url: str | None = None  # EDGELOOP_MQTT_URL: unset = no telemetry (unless the controller names one)
    telemetry_prefix: str = DEFAULT_PREFIX  # EDGELOOP_TELEMETRY_PREFIX
    metrics_interval_s: float = 10.0
    # the fleet (agent run)
    controller: str = (
        DEFAULT_CONTROLLER  # EDGELOOP_CONTROLLER host:port of the controller's gRPC, or several: a,b
    )
    enrollment_token: str | None = None  # EDGELOOP_ENROLLMENT_TOKEN (or --enrollment-token-file)
    enroll_target: str | None = None  # EDGELOOP_ENROLL: host:port of the TLS enrolment port (None = port + 1)
    ca_fingerprint: str | None = None  # EDGELOOP_CA_FINGERPRINT: sha256:<hex> of the controller CA
    ca_file: Path | None = None  # EDGELOOP_CA_FILE: the controller CA (PEM), instead of the fingerprint
    insecure: bool = False  # EDGELOOP_INSECURE: plaintext gRPC (the controller must run with --insecure too)
    name: str = ""  # device name at registration; "" = the hostname
    tags: tuple[str, ...] = ()  # EDGELOOP_AGENT_TAGS
    # live inference (agent serve, agent run)
    serve_host: str = DEFAULT_SERVE_HOST  # EDGELOOP_SERVE_HOST: address of the gRPC and HTTP ports
    serve_port: int = DEFAULT_SERVE_PORT  # Open Inference Protocol gRPC; 0 = a free port, -1 = off
    http_port: int = DEFAULT_HTTP_PORT  # Open Inference Protocol HTTP/REST + /metrics; 0 = free, -1 = off
    # bearer token the inference ports demand (EDGELOOP_SERVE_TOKEN, or read from serve_token_file
    # = EDGELOOP_SERVE_TOKEN_FILE / --serve-token-file); never a command-line value (ps shows argv)
    serve_token: str | None = field(default=None, repr=False)
    serve_token_file: Path | None = None
    max_request_batch: int = DEFAULT_MAX_REQUEST_BATCH  # largest batch one request may carry
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # largest request body / tensor data
    batch_delay_ms: float = 0.0  # dynamic batching window; 0 = off (each request runs alone)
    max_batch: int = 8  # the largest batch dynamic batching merges
    preferred_batch_sizes: tuple[int, ...] = ()  # dynamic batching runs as soon as one is reached
    model_repository: Path | None = None  # <dir>/<name>/model.onnx the repository extension loads

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.serve_port < -1 or self.serve_port > 65535:
            raise ValueError(
                f"serve port must be 0-65535 (0 = a free one) or -1 (off), got {self.serve_port}"
            )
        if self.http_port < -1 or self.http_port > 65535:
            raise ValueError(f"http port must be 0-65535 (0 = a free one) or -1 (off), got {self.http_port}")
        if self.max_request_batch < 1:
            raise ValueError(f"max request batch must be >= 1, got {self.max_request_batch}")
        if self.max_request_bytes < 1024:
            raise ValueError(f"max request bytes must be >= 1024, got {self.max_request_bytes}")
        if any(b < 1 for b in self.preferred_batch_sizes):
            raise ValueError(f"preferred batch sizes must be >= 1, got {list(self.preferred_batch_sizes)}")
        if self.batch_delay_ms < 0:
            raise ValueError(f"batch delay must be >= 0 ms, got {self.batch_delay_ms}")
        if self.max_batch < 1:
            raise ValueError(f"max batch must be >= 1, got {self.max_batch}")
        if self.metrics_interval_s <= 0:
            raise ValueError(f"metrics interval must be > 0 s, got {self.metrics_interval_s}")

    @property
    def cache_dir(self) -> Path:
        return self.engines_dir or self.agent_dir / "engines"

    @property
    def slots_dir(self) -> Path:
        return self.agent_dir / "slots"

    @property
    def spool_dir(self) -> Path:
        """QoS 1 telemetry not yet acknowledged by the broker (agent.spool)."""
        return self.agent_dir / "telemetry-spool"

    @property
    def serves_grpc(self) -> bool:
        return self.serve_port >= 0

    @property
    def serves_http(self) -> bool:
        return self.http_port >= 0

    def inference_token(self) -> str | None:
        """The bearer token the inference ports demand (None = open): the token file's first
        line when a file is named, else ``serve_token``. A named file that is missing or empty is
        an error, not an open port."""
        if self.serve_token_file is None:
            return self.serve_token or None
        try:
            token = self.serve_token_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"serve token file {self.serve_token_file}: {exc.strerror}") from exc
        if not token:
            raise ValueError(f"serve token file {self.serve_token_file} is empty")
        return token

    def override(self, **values: Any) -> AgentSettings:
        """These settings with each field given a value that is not None replaced (the command
        line over the environment); names that are not fields (other CLI flags) are ignored."""
        names = {f.name for f in dataclasses.fields(self)}
        return dataclasses.replace(self, **{k: v for k, v in values.items() if k in names and v is not None})

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> AgentSettings:
        env = os.environ if environ is None else environ
        agent_dir = env.get("EDGELOOP_AGENT_DIR")
        return cls(
            agent_dir=Path(agent_dir).expanduser() if agent_dir else default_agent_dir(),
            threads=_int_or_none(env.get("EDGELOOP_AGENT_THREADS"), "EDGELOOP_AGENT_THREADS"),
            hardware_class=env.get("EDGELOOP_HARDWARE_CLASS") or None,
            mqtt_url=env.get("EDGELOOP_MQTT_URL") or None,
            telemetry_prefix=env.get("EDGELOOP_TELEMETRY_PREFIX") or DEFAULT_PREFIX,
            controller=env.get("EDGELOOP_CONTROLLER") or DEFAULT_CONTROLLER,
            enrollment_token=env.get("EDGELOOP_ENROLLMENT_TOKEN") or None,
            enroll_target=env.get("EDGELOOP_ENROLL") or None,
            ca_fingerprint=env.get("EDGELOOP_CA_FINGERPRINT") or None,
            ca_file=Path(env["EDGELOOP_CA_FILE"]).expanduser() if env.get("EDGELOOP_CA_FILE") else None,
            insecure=env.get("EDGELOOP_INSECURE", "").lower() in ("1", "true", "yes"),
            tags=parse_tags(env.get("EDGELOOP_AGENT_TAGS", "")),
            serve_host=env.get("EDGELOOP_SERVE_HOST") or DEFAULT_SERVE_HOST,
            serve_token=env.get("EDGELOOP_SERVE_TOKEN") or None,
            serve_token_file=Path(env["EDGELOOP_SERVE_TOKEN_FILE"]).expanduser()
            if env.get("EDGELOOP_SERVE_TOKEN_FILE")
            else None,
        )
