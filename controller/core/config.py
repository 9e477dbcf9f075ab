"""The controller's one settings object: every environment variable it reads is named here.

Nothing else in ``controller/`` reads the environment. Settings are built by a function (never
at import), so tests and the CLI make their own with overrides.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
from enum import Enum
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from controller.core.private import created_once, private_dir, read_secret, touch_private, write_private

VERSION = "0.1.0"
PLACEHOLDER_SECRETS = {"changethis", "change-me", "secret", "token", ""}


class Environment(str, Enum):
    local = "local"
    production = "production"


def normalise_db_url(url: str) -> str:
    """``postgres://`` and ``postgresql://`` mean psycopg 3 here (the driver we ship)."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def with_password(url: str, password: str) -> str:
    """``mqtt://user@host`` + password -> ``mqtt://user:password@host`` (the user must be named)."""
    parts = urlsplit(url)
    if not parts.username:
        raise ValueError("the MQTT URL names no user for the password file (mqtt://USER@host:port)")
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username}:{quote(password, safe='')}@{host}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EDGELOOP_", extra="ignore")

    environment: Environment = Environment.local
    data_dir: Path = Field(default_factory=lambda: Path.home() / ".edgeloop" / "controller")
    db_url: str | None = None
    grpc_host: str = "0.0.0.0"
    grpc_port: int = 50051
    http_host: str = "0.0.0.0"
    http_port: int = 8000
    mqtt_url: str | None = None
    telemetry_prefix: str = "edgeloop"
    # the controller's MQTT session: fixed across restarts so the broker keeps what arrives while
    # it is down; None = derived from the data dir (two controllers on one broker do not collide)
    mqtt_client_id: str | None = None
    # this process among several controllers on one PostgreSQL (docs/deploy.md "Several
    # controllers"): names who holds a device's stream; None = hostname:grpc_port
    controller_id: str | None = Field(default=None, min_length=1, max_length=64)
    # MQTT shared subscription group ($share/<group>/...): the controllers of one fleet split
    # the telemetry between them instead of each taking all of it; None = a plain subscription
    telemetry_share_group: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    max_upload_bytes: int = 8 << 30  # REST uploads (models, shards): streamed to disk, refused beyond
    api_token: str | None = None
    enrollment_token: str | None = None
    # secrets from files (kept out of `ps` and shell history); a file wins over nothing, not over a value
    api_token_file: Path | None = None
    enrollment_token_file: Path | None = None
    mqtt_password_file: Path | None = None  # the password for the user of mqtt_url
    # transport security: TLS with the controller's CA unless insecure (explicit, both sides)
    insecure: bool = False
    enroll_port: int | None = None  # TLS enrolment port (server-only TLS); None = grpc_port + 1
    tls_names: tuple[str, ...] = ()  # extra DNS names / IPs for the gRPC server certificate
    # what agents are told to use for their control stream
    heartbeat_interval_s: int = 10
    artifact_chunk_bytes: int = 4 << 20  # per DownloadArtifact message; 4 MiB costs ~20% less CPU than 1 MiB
    artifact_cache_bytes: int = 256 << 20  # serialized chunks kept in memory for rollouts to many devices
    rollout_tick_s: float = 0.5
    deploy_timeout_s: float = 600.0
    start_broker: bool = True  # when mqtt_url is unset, start a local one (else no telemetry)
    # artifact bytes over HTTP(S) (controller/services/storage.py, docs/deploy.md): "local" = the
    # artifacts dir, served by nginx when artifact_url_base is set; "s3" = an S3-compatible bucket
    artifact_store: Literal["local", "s3"] = "local"
    # where artifact bytes are stored; None = <data dir>/artifacts. Served by nginx as another user,
    # put it outside the data dir (which is 0700): e.g. /var/lib/edgeloop/artifacts
    artifact_dir: Path | None = None
    artifact_url_base: str | None = None  # e.g. https://artifacts.example.com/artifacts (nginx)
    artifact_url_secret: str | None = None  # nginx secure_link_md5 secret (deploy/nginx/)
    artifact_url_ttl_s: int = Field(default=600, ge=10)  # how long a URL in a command stays valid
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_endpoint_url: str | None = None  # MinIO, Ceph RGW, ...; unset = AWS
    s3_region: str | None = None

    @field_validator("db_url")
    @classmethod
    def _normalise(cls, v: str | None) -> str | None:
        return normalise_db_url(v) if v else v

    @model_validator(mode="after")
    def _refuse_placeholders(self) -> Settings:
        if self.environment == Environment.production:
            for name in ("api_token", "enrollment_token"):
                value = getattr(self, name)
                if value is None or value.strip().lower() in PLACEHOLDER_SECRETS:
                    raise ValueError(f"EDGELOOP_{name.upper()} must be set to a real secret in production")
        return self

    @model_validator(mode="after")
    def _artifact_store_complete(self) -> Settings:
        if bool(self.artifact_url_base) != bool(self.artifact_url_secret):
            raise ValueError("EDGELOOP_ARTIFACT_URL_BASE and EDGELOOP_ARTIFACT_URL_SECRET go together")
        secret = (self.artifact_url_secret or "").strip().lower()
        if (
            self.artifact_url_base
            and self.environment == Environment.production
            and secret in PLACEHOLDER_SECRETS
        ):
            raise ValueError("EDGELOOP_ARTIFACT_URL_SECRET must be set to a real secret in production")
        if self.artifact_store == "s3" and not self.s3_bucket:
            raise ValueError("EDGELOOP_ARTIFACT_STORE=s3 needs EDGELOOP_S3_BUCKET")
        return self

    @property
    def database_url(self) -> str:
        return self.db_url or f"sqlite:///{self.data_dir / 'edgeloop.db'}"

    @property
    def instance_id(self) -> str:
        """``controller_id``, else hostname:gRPC port; with the port picked at bind (0: tests,
        several controllers in one process), hostname:pid:<this settings object>."""
        if self.controller_id:
            return self.controller_id
        where = self.grpc_port or f"{os.getpid()}:{id(self):x}"
        return f"{socket.gethostname()}:{where}"[:64]

    @property
    def mqtt_session_id(self) -> str:
        """Fixed across restarts (the broker keeps the session), distinct per controller: from
        the data dir, and the instance id when one is set (controllers sharing a data dir)."""
        if self.mqtt_client_id:
            return self.mqtt_client_id
        key = str(self.data_dir.expanduser().resolve())
        if self.controller_id:
            key += "|" + self.controller_id
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        return f"edgeloop-controller-{digest}"

    @property
    def artifacts_dir(self) -> Path:
        return self.artifact_dir or self.data_dir / "artifacts"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    def ensure_dirs(self) -> None:
        for d in (self.data_dir, self.keys_dir):
            private_dir(d)
        if self.artifact_url_base:
            # served by a web server that runs as its own user (nginx): others may read, not write;
            # the bytes are signed, and nginx checks the URL's signature before it serves one
            self.artifacts_dir.mkdir(parents=True, exist_ok=True)
            self.artifacts_dir.chmod(0o755)
        else:
            private_dir(self.artifacts_dir)
        if self.database_url.startswith("sqlite:///") and not self.database_url.endswith(":memory:"):
            touch_private(Path(self.database_url.removeprefix("sqlite:///")))

    def resolve_secrets(self) -> None:
        """Tokens from their ``*_file`` settings, else the environment, else a random one kept
        in the data dir (0600); the MQTT password from its file into the broker URL."""
        self.ensure_dirs()
        for name in ("api_token", "enrollment_token"):
            if getattr(self, name):
                continue
            source = getattr(self, f"{name}_file")
            if source is not None:
                setattr(self, name, read_secret(source))
                continue
            path = self.data_dir / name
            with created_once(self.data_dir):  # controllers sharing the data dir share the token
                if path.exists():
                    setattr(self, name, read_secret(path))
                else:
                    value = secrets.token_hex(24)  # never starts with '-'
                    write_private(path, value + "\n")
                    setattr(self, name, value)
        if self.mqtt_password_file is not None and self.mqtt_url:
            self.mqtt_url = with_password(self.mqtt_url, read_secret(self.mqtt_password_file))


def get_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with explicit overrides (CLI flags, tests) winning."""
    return Settings(**{k: v for k, v in overrides.items() if v is not None})
