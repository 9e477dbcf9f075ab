"""The agent's gRPC client: enrol once, keep the device credentials, hold the control stream.

Agents always dial out. ``register`` trades the enrollment token for a device id and token
(saved 0600 under ``<agent_dir>/fleet/credentials.json``, with the controller's artifact
public key); later calls carry them as metadata. ``serve_forever`` keeps one bidirectional
stream open (hello, heartbeats and command status up; commands down) and reconnects with
exponential backoff and jitter. The target may name several controllers (``host1:port,host2:port``,
docs/deploy.md "Several controllers"): when the stream to one breaks, the client moves to the
next (round-robin, ``failovers`` counts it; the backoff grows once every one has failed),
keeping its identity: its certificate is of the CA the controllers share. A device the controller refuses (revoked, unknown) stops with
``DeviceRefused`` instead of hammering the controller.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Literal

import grpc

from agent.fleet.tls import TLS_NAME, UntrustedController, fetch_pinned_ca, new_key_and_csr
from protos import fleet_pb2, fleet_pb2_grpc
from protos.chunks import decode_chunk
from protos.redact import with_credentials

log = logging.getLogger(__name__)
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.http2.max_frame_size", 4 << 20),  # artifact chunks in fewer HTTP/2 frames (~20% faster)
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_reconnect_backoff_ms", 10_000),  # a controller back after a restart is found soon
]


def parse_targets(targets: str) -> list[str]:
    """``host:port[,host:port...]`` -> the addresses, in order; refuses an empty one."""
    out = [t.strip() for t in targets.split(",")]
    if not out or any(not t for t in out):
        raise ValueError(f"controller address list {targets!r} has an empty entry (HOST:PORT[,HOST:PORT...])")
    return out


def _next_port(target: str) -> str:
    """HOST:PORT -> HOST:PORT+1 (the controller's default enrolment port)."""
    host, sep, port = target.rpartition(":")
    return f"{host}:{int(port) + 1}" if sep and port.isdigit() else target


class FleetStub(fleet_pb2_grpc.FleetServiceStub):
    """The generated stub, except that DownloadArtifact yields ``protos.chunks.ChunkView``s whose
    ``data`` is a view into the received message (no copy of the payload), mirroring the
    controller's pre-serialized chunks."""

    def __init__(self, channel: grpc.Channel) -> None:
        super().__init__(channel)
        self.DownloadArtifact = channel.unary_stream(
            f"/{fleet_pb2.DESCRIPTOR.services_by_name['FleetService'].full_name}/DownloadArtifact",
            request_serializer=fleet_pb2.DownloadRequest.SerializeToString,
            response_deserializer=decode_chunk,
            _registered_method=True,
        )


class DeviceRefused(Exception):
    """The controller does not accept this device (revoked, unknown id, wrong enrollment token)."""


@dataclass
class Credentials:
    device_id: str
    device_token: str
    public_key_hex: str
    controller: str
    mqtt_url: str = ""
    telemetry_prefix: str = "edgeloop"
    heartbeat_interval_s: int = 10
    # TLS mode: the device's key and certificate, and the controller CA it pinned
    client_key_pem: str = ""
    client_cert_pem: str = ""
    ca_pem: str = ""
    # the device's own broker account
    mqtt_username: str = ""
    mqtt_password: str = ""

    @property
    def telemetry_url(self) -> str:
        """The broker URL with this device's own account in it ("" = no broker named)."""
        if not self.mqtt_url or not self.mqtt_username:
            return self.mqtt_url
        return with_credentials(self.mqtt_url, self.mqtt_username, self.mqtt_password)

    @property
    def public_key(self) -> bytes:
        return bytes.fromhex(self.public_key_hex)

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(asdict(self), fh, indent=2)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Credentials | None:
        if not path.exists():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class AgentIdentity:
    """What the agent tells the controller about itself at Register."""

    name: str
    hardware: fleet_pb2.HardwareProfile
    capabilities: list[fleet_pb2.Capability] = field(default_factory=list)
    agent_version: str = "0.1.0"
    tags: list[str] = field(default_factory=list)


class FleetClient:
    def __init__(
        self,
        target: str,
        agent_dir: str | Path,
        identity: AgentIdentity,
        enrollment_token: str = "",
        *,
        enroll_target: str = "",
        ca_fingerprint: str = "",
        ca_pem: bytes = b"",
        insecure: bool = False,
        channel: grpc.Channel | None = None,
    ) -> None:
        """``insecure`` = plaintext gRPC with metadata tokens (the controller must run with
        --insecure too). Otherwise the agent enrols over TLS at ``enroll_target`` (default: the
        controller's port + 1), trusting only the CA whose fingerprint it was given (or the
        ``ca_pem`` of an enrolment bundle), then makes every call with mutual TLS."""
        self.targets = parse_targets(target)
        self.enroll_targets = (
            parse_targets(enroll_target) if enroll_target else [_next_port(t) for t in self.targets]
        )
        if len(self.enroll_targets) != len(self.targets):
            raise ValueError("name one enrolment address per controller address (or none)")
        self._index = 0  # the controller in use
        self.failovers = 0  # moves to another controller after the stream to one broke
        self.agent_dir = Path(agent_dir)
        self.identity = identity
        self.enrollment_token = enrollment_token
        self.insecure = insecure
        self.ca_fingerprint = ca_fingerprint
        self.ca_pem = ca_pem
        self.credentials = Credentials.load(self.credentials_path)
        self.channel = channel or self._channel()
        self._retired: grpc.Channel | None = None  # the channel before the last failover
        self.stub = FleetStub(self.channel)
        self._outbox: queue.Queue[fleet_pb2.AgentMessage | None] = queue.Queue()
        self._stop = threading.Event()
        self._call = None
        self._generation = 0
        self.connected = threading.Event()

    def _channel(self) -> grpc.Channel:
        """Plaintext with --insecure; mutual TLS once enrolled; until then a channel on which
        every call fails (UNAUTHENTICATED) so that ``register`` runs first."""
        if self.insecure:
            return grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        creds = self.credentials
        if creds is None or not creds.client_cert_pem:
            return grpc.insecure_channel("unix:/nonexistent-not-enrolled", options=CHANNEL_OPTIONS)
        tls = grpc.ssl_channel_credentials(
            root_certificates=creds.ca_pem.encode(),
            private_key=creds.client_key_pem.encode(),
            certificate_chain=creds.client_cert_pem.encode(),
        )
        return grpc.secure_channel(
            self.target, tls, options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", TLS_NAME)]
        )

    @property
    def target(self) -> str:
        """The controller in use."""
        return self.targets[self._index]

    @property
    def enroll_target(self) -> str:
        return self.enroll_targets[self._index]

    def _use_channel(self, channel: grpc.Channel) -> None:
        old, self.channel = self.channel, channel
        self.stub = FleetStub(channel)
        old.close()

    def failover(self, from_target: str = "") -> str:
        """Move to the next controller of the list; returns it. ``from_target``: the one a call
        failed on (no move when the client already left it). A download or report retrying
        takes the new channel at its next attempt; the old one is closed only at the next
        failover, so a call still running on it is not cut."""
        if len(self.targets) < 2 or (from_target and from_target != self.target):
            return self.target
        old = self.target
        self._index = (self._index + 1) % len(self.targets)
        self.failovers += 1
        log.warning("controller %s unreachable: moving to %s (failover %d)", old, self.target, self.failovers)
        if self._retired is not None:
            self._retired.close()
        self._retired, self.channel = self.channel, self._channel()
        self.stub = FleetStub(self.channel)
        return self.target

    @property
    def credentials_path(self) -> Path:
        return self.agent_dir / "fleet" / "credentials.json"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        if self.credentials is None:
            raise DeviceRefused("not registered")
        if not self.insecure:
            return ()  # the client certificate is the credential
        return (
            ("authorization", f"Bearer {self.credentials.device_token}"),
            ("x-edgeloop-device", self.credentials.device_id),
        )

    # ------------------------------------------------------------ enrolment
    def register(self, timeout: float = 30.0) -> Credentials:
        """Enrol, or renew this device's credential with its own (a known device); saves the
        credentials. With TLS, a new key and CSR are made each time and the controller CA is
        pinned (fingerprint or bundle) before the token is sent."""
        known = self.credentials
        key_pem = csr_pem = b""
        if not self.insecure:
            key_pem, csr_pem = new_key_and_csr(self.identity.name)
        request = fleet_pb2.RegisterRequest(
            enrollment_token=self.enrollment_token,
            name=self.identity.name,
            hardware=self.identity.hardware,
            capabilities=self.identity.capabilities,
            agent_version=self.identity.agent_version,
            tags=self.identity.tags,
            device_id=known.device_id if known else "",
            csr_pem=csr_pem,
        )
        renewing = known is not None and bool(known.client_cert_pem) and not self.insecure
        stub, channel = self.stub, None
        ca_pem = known.ca_pem.encode() if renewing and known else b""
        if not self.insecure and not renewing:
            try:
                ca_pem = self.ca_pem or fetch_pinned_ca(
                    self.enroll_target, self.ca_fingerprint, timeout=timeout
                )
            except UntrustedController as exc:
                raise DeviceRefused(str(exc)) from exc
            channel = grpc.secure_channel(
                self.enroll_target,
                grpc.ssl_channel_credentials(root_certificates=ca_pem),
                options=[*CHANNEL_OPTIONS, ("grpc.ssl_target_name_override", TLS_NAME)],
            )
            stub = FleetStub(channel)
        try:
            resp = stub.Register(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise DeviceRefused(f"controller refused registration: {exc.details()}") from exc
            raise
        finally:
            if channel is not None:
                channel.close()
        self.credentials = Credentials(
            device_id=resp.device_id,
            device_token=resp.device_token,
            public_key_hex=resp.artifact_signing_public_key.hex(),
            controller=self.target,
            mqtt_url=resp.mqtt_url,
            telemetry_prefix=resp.telemetry_prefix or "edgeloop",
            heartbeat_interval_s=resp.heartbeat_interval_s or 10,
            client_key_pem=key_pem.decode(),
            client_cert_pem=resp.client_certificate_pem.decode(),
            ca_pem=(resp.ca_certificate_pem or ca_pem).decode() if not self.insecure else "",
            mqtt_username=resp.mqtt_username,
            mqtt_password=resp.mqtt_password,
        )
        if not self.insecure and resp.ca_certificate_pem and ca_pem and resp.ca_certificate_pem != ca_pem:
            raise DeviceRefused("the controller named another CA than the one pinned at enrolment")
        self.credentials.save(self.credentials_path)
        if not self.insecure:
            self._use_channel(self._channel())
        log.info("registered as %s with %s", resp.device_id, self.target)
        return self.credentials

    # ------------------------------------------------------------ unary calls
    def report(self, report: fleet_pb2.Report, timeout: float = 30.0) -> str:
        ack = self.stub.ReportResult(
            fleet_pb2.ResultReport(report=report), metadata=self.metadata, timeout=timeout
        )
        return ack.result_id

    # ------------------------------------------------------------ the stream
    def send_status(
        self,
        command_id: str,
        state: str,
        message: str = "",
        *,
        progress: float = 0.0,
        kind: str = "",
        model_version: str = "",
    ) -> None:
        self._outbox.put(
            fleet_pb2.AgentMessage(
                status=fleet_pb2.CommandStatus(
                    command_id=command_id,
                    state=state,
                    message=message[:2000],
                    progress=progress,
                    kind=kind,
                    model_version=model_version,
                )
            )
        )

    def _outgoing(self, hello: fleet_pb2.Hello, state_fn: Callable[[], tuple[str, ...]]) -> Iterator:
        generation = self._generation
        yield fleet_pb2.AgentMessage(hello=hello)
        interval = self.credentials.heartbeat_interval_s if self.credentials else 10
        next_beat = time.monotonic() + interval
        msg: fleet_pb2.AgentMessage | Literal[False] | None  # False: the heartbeat timer fired
        while not self._stop.is_set():
            try:
                msg = self._outbox.get(timeout=max(0.05, next_beat - time.monotonic()))
            except queue.Empty:
                msg = False
            if msg is None:
                return
            if generation != self._generation:  # this stream is gone: keep the message for the next
                if msg is not False:
                    self._outbox.put(msg)
                return
            if msg is not False:
                yield msg
            if time.monotonic() >= next_beat:
                active, candidate, previous = (*state_fn(), "")[:3]
                yield fleet_pb2.AgentMessage(
                    heartbeat=fleet_pb2.Heartbeat(timestamp=time.time(), active_version=active,
                                                  candidate_version=candidate, previous_version=previous)
                )  # fmt: skip
                next_beat = time.monotonic() + interval

    def connect_once(
        self,
        on_command: Callable[[fleet_pb2.ControllerCommand], None],
        hello_fn: Callable[[], fleet_pb2.Hello],
        state_fn: Callable[[], tuple[str, ...]],
    ) -> None:
        """One control stream until it breaks; commands are handed to ``on_command`` in order."""
        call = self.stub.Connect(self._outgoing(hello_fn(), state_fn), metadata=self.metadata)
        self._call = call
        self.connected.set()
        try:
            for command in call:
                on_command(command)
        finally:
            self._generation += 1
            self.connected.clear()
            self._call = None

    def serve_forever(
        self,
        on_command: Callable[[fleet_pb2.ControllerCommand], None],
        hello_fn: Callable[[], fleet_pb2.Hello],
        state_fn: Callable[[], tuple[str, ...]],
        *,
        max_backoff_s: float = 30.0,
    ) -> None:
        """Register when needed and keep the stream up until ``stop()``; raises DeviceRefused."""
        backoff = 0.5
        failed_in_a_row = 0  # stream attempts that broke, on any controller, since one stayed up
        while not self._stop.is_set():
            started, target = time.monotonic(), self.target
            broke = False
            try:
                if self.credentials is None:
                    self.register()
                self.connect_once(on_command, hello_fn, state_fn)
            except grpc.RpcError as exc:
                code = exc.code()
                if code == grpc.StatusCode.UNAUTHENTICATED and self.enrollment_token:
                    log.info("device token refused; registering again")
                    try:
                        self.register()
                        continue
                    except DeviceRefused:
                        raise
                    except grpc.RpcError:
                        pass
                elif code == grpc.StatusCode.PERMISSION_DENIED:
                    raise DeviceRefused(f"controller refused this device: {exc.details()}") from exc
                elif code != grpc.StatusCode.CANCELLED or not self._stop.is_set():
                    log.warning("control stream to %s broke: %s %s", self.target, code.name, exc.details())
                    broke = True
            if self._stop.is_set():
                break
            if time.monotonic() - started > 10:
                backoff, failed_in_a_row = 0.5, 0  # it was up for a while: start the backoff again
            if broke and len(self.targets) > 1:
                failed_in_a_row += 1
                self.failover(from_target=target)  # a command's retries may have moved already
                if failed_in_a_row < len(self.targets):  # another controller not tried yet: at once
                    self._stop.wait(0.2 * random.random())
                    continue
                failed_in_a_row = 0
            delay = backoff * (0.5 + random.random())
            log.info("reconnecting in %.1fs", delay)
            self._stop.wait(delay)
            backoff = min(max_backoff_s, backoff * 2)

    def stop(self) -> None:
        self._stop.set()
        self._outbox.put(None)
        call = self._call
        if call is not None:
            call.cancel()

    def close(self) -> None:
        self.stop()
        self.channel.close()
        if self._retired is not None:
            self._retired.close()
