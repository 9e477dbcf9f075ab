"""``edgeloop agent run``: the fleet daemon, a thin loop from controller commands to device work.

It enrols with the controller (``--controller HOST:PORT``, enrollment token), keeps the control
stream, and for each command: downloads and verifies the artifacts it names (from the URL the
controller put in the reference when there is one, ``agent.fleet.http_fetch``, else or when that
fails, with the reason in the command's message, over gRPC), asks the device to
do the work (``DeviceWork``: the ``AgentRuntime`` on a device, a scripted stand-in in the
controller's tests), sends the measured reports and a final status. Commands are idempotent by
id: a command seen again after a reconnect (the controller resends what it has not seen finish)
only repeats its final status.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

import grpc

from agent.config import AgentSettings
from agent.fleet.client import AgentIdentity, DeviceRefused, FleetClient
from agent.fleet.download import ArtifactRejected, DownloadInterrupted, download_artifact, fetch_verified
from agent.fleet.http_fetch import UrlFetcher, UrlGivenUp
from agent.probe import capabilities
from agent.runtime import AgentRuntime, SlotState
from agent.shards import Shards
from protos import fleet_pb2

log = logging.getLogger(__name__)
JOURNAL_KEEP = 500
DOWNLOAD_ATTEMPTS = 3  # downloads whose bytes fail verification before the command fails
TRANSIENT = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
T = TypeVar("T")


class DeviceWork(Protocol):
    """What the daemon asks of the device (``AgentRuntime`` implements it)."""

    def state(self) -> SlotState: ...

    def deploy(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Deploy, shards: Shards
    ) -> fleet_pb2.Report: ...

    def benchmark(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Benchmark, shards: Shards
    ) -> list[fleet_pb2.Report]: ...

    def calibrate(
        self, *, onnx_path: Path, manifest_json: str, command: fleet_pb2.Calibrate, shards: Shards
    ) -> fleet_pb2.Report: ...

    def switch(self, model_version: str) -> str: ...

    def rollback(self, to_version: str = "") -> str: ...

    def pipeline(self, command: fleet_pb2.Pipeline) -> str: ...


class FleetAgent:
    """Maps commands to device work; one command at a time, in arrival order."""

    def __init__(self, client: FleetClient, device: DeviceWork, *, retry_budget_s: float = 600.0) -> None:
        self.client = client
        self.device = device
        self.retry_budget_s = retry_budget_s
        self.artifacts_dir = client.agent_dir / "artifacts"
        self.journal_path = client.agent_dir / "fleet" / "commands.json"
        self._journal: OrderedDict[str, dict] = OrderedDict()
        if self.journal_path.exists():
            self._journal = OrderedDict(json.loads(self.journal_path.read_text(encoding="utf-8")))
        self._lock = threading.Lock()
        self._urls: UrlFetcher | None = None  # made on the first URL (an HTTP client and its pool)
        self._url_notes: list[str] = []  # why a URL was given up for gRPC, for the command's message

    # -- stream callbacks
    def hello(self) -> fleet_pb2.Hello:
        st = self.device.state()
        return fleet_pb2.Hello(
            agent_version=self.client.identity.agent_version,
            active_version=st.active,
            candidate_version=st.candidate,
            previous_version=st.previous,
            cached_artifacts=st.cached,
        )

    def slot_versions(self) -> tuple[str, str, str]:
        """(active, candidate, previous) for the heartbeat."""
        st = self.device.state()
        return st.active, st.candidate, st.previous

    def on_command(self, command: fleet_pb2.ControllerCommand) -> None:
        with self._lock:
            done = self._journal.get(command.command_id)
            if done is not None:
                self.client.send_status(command.command_id, **done)
                return
            kind = command.WhichOneof("body") or ""
            self.client.send_status(command.command_id, "accepted", kind=kind)
            self._url_notes = []
            try:
                version, message = getattr(self, f"_do_{kind}")(command)
                final = {"state": "succeeded", "message": message, "kind": kind, "model_version": version}
            except (ArtifactRejected, DownloadInterrupted) as exc:
                final = {
                    "state": "failed",
                    "message": f"artifact refused: {exc}",
                    "kind": kind,
                    "model_version": "",
                }
            except Exception as exc:  # the device work failed: say why, keep serving
                log.exception("command %s (%s) failed", command.command_id, kind)
                final = {
                    "state": "failed",
                    "message": f"{type(exc).__name__}: {exc}",
                    "kind": kind,
                    "model_version": "",
                }
            if self._url_notes:
                final["message"] += "; " + "; ".join(self._url_notes)
            final["progress"] = 1.0
            self._remember(command.command_id, final)
            self.client.send_status(command.command_id, **final)

    def _remember(self, command_id: str, final: dict) -> None:
        self._journal[command_id] = final
        while len(self._journal) > JOURNAL_KEEP:
            self._journal.popitem(last=False)
        self.journal_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.journal_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._journal), encoding="utf-8")
        os.replace(tmp, self.journal_path)

    # -- retries across controller restarts and network blips
    def _retrying(self, what: str, fn: Callable[[], T]) -> T:
        """Call ``fn`` until it succeeds, retrying transient failures with backoff for up to
        ``retry_budget_s`` (the controller may be restarting; with several controllers, one that
        does not answer is left for the next: ``FleetClient.failover``)."""
        delay, deadline = 0.5, time.monotonic() + self.retry_budget_s
        while True:
            target = self.client.target
            try:
                return fn()
            except grpc.RpcError as exc:
                if exc.code() not in TRANSIENT or time.monotonic() > deadline:
                    raise
                if exc.code() == grpc.StatusCode.UNAVAILABLE:  # the next controller, when several
                    self.client.failover(from_target=target)
                log.warning("%s: %s; retrying in %.1fs", what, exc.code().name, delay)
            except DownloadInterrupted as exc:
                if time.monotonic() > deadline:
                    raise
                self.client.failover(from_target=target)
                log.warning("%s: %s; resuming in %.1fs", what, exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, 10.0)

    # -- artifacts
    def fetch(self, ref: fleet_pb2.ArtifactRef, command_id: str = "") -> Path:
        creds = self.client.credentials
        url_given_up = not ref.url

        def once() -> Path:
            nonlocal url_given_up

            def progress(done: int, total: int) -> None:
                if command_id and total:
                    self.client.send_status(command_id, "running", "downloading", progress=0.5 * done / total)

            if not url_given_up:
                try:
                    if self._urls is None:
                        self._urls = UrlFetcher()
                    return self._urls.fetch(
                        ref,
                        self.artifacts_dir,
                        creds.public_key if creds else b"",
                        on_progress=progress if command_id else None,
                    ).path
                except UrlGivenUp as exc:
                    url_given_up = True
                    note = f"{ref.kind or 'model'} {ref.artifact_id} over gRPC: URL failed ({exc})"
                    log.warning("%s", note)
                    self._url_notes.append(note)
                    if command_id:
                        self.client.send_status(command_id, "running", note[:500])
            return download_artifact(
                self.client.stub,
                ref,
                self.artifacts_dir,
                creds.public_key if creds else b"",
                metadata=self.client.metadata,
                on_progress=progress if command_id else None,
            ).path

        what = f"download of {ref.artifact_id}"
        # a break of the link resumes (``_retrying``); bytes that fail verification start over from 0
        return fetch_verified(lambda: self._retrying(what, once), attempts=DOWNLOAD_ATTEMPTS, what=what)

    def _shards(
        self,
        calibration: fleet_pb2.ArtifactRef,
        evaluation: fleet_pb2.ArtifactRef,
        stream_clip: fleet_pb2.ArtifactRef | None = None,
    ) -> Shards:
        return Shards(
            calibration=self.fetch(calibration) if calibration.artifact_id else None,
            evaluation=self.fetch(evaluation) if evaluation.artifact_id else None,
            stream_clip=self.fetch(stream_clip) if stream_clip and stream_clip.artifact_id else None,
        )

    # -- commands
    def _send_report(self, report: fleet_pb2.Report, command_id: str) -> None:
        report.command_id = command_id
        self._retrying("report", lambda: self.client.report(report))

    def _do_deploy(self, command: fleet_pb2.ControllerCommand) -> tuple[str, str]:
        d = command.deploy
        onnx_path = self.fetch(d.artifact, command.command_id)
        shards = self._shards(d.calibration, d.evaluation)
        report = self.device.deploy(
            onnx_path=onnx_path, manifest_json=d.artifact.manifest_json, command=d, shards=shards
        )
        report.model_version = report.model_version or d.artifact.model_version
        report.artifact_id = report.artifact_id or d.artifact.artifact_id
        self._send_report(report, command.command_id)
        active = self.device.state().active
        return active, f"deployed {d.artifact.model_version}; active {active}"

    def _do_benchmark(self, command: fleet_pb2.ControllerCommand) -> tuple[str, str]:
        b = command.benchmark
        onnx_path = self.fetch(b.artifact, command.command_id)
        shards = self._shards(b.calibration, b.evaluation, b.stream_clip)
        reports = self.device.benchmark(
            onnx_path=onnx_path, manifest_json=b.artifact.manifest_json, command=b, shards=shards
        )
        for report in reports:
            report.model_version = report.model_version or b.artifact.model_version
            report.artifact_id = report.artifact_id or b.artifact.artifact_id
            report.round_id = report.round_id or b.round_id
            self._send_report(report, command.command_id)
        return b.artifact.model_version, f"{len(reports)} reports"

    def _do_calibrate(self, command: fleet_pb2.ControllerCommand) -> tuple[str, str]:
        c = command.calibrate
        onnx_path = self.fetch(c.artifact, command.command_id)
        shards = self._shards(c.calibration, fleet_pb2.ArtifactRef())
        report = self.device.calibrate(
            onnx_path=onnx_path, manifest_json=c.artifact.manifest_json, command=c, shards=shards
        )
        report.model_version = report.model_version or c.artifact.model_version
        self._send_report(report, command.command_id)
        return c.artifact.model_version, "calibrated"

    def _do_switch(self, command: fleet_pb2.ControllerCommand) -> tuple[str, str]:
        active = self.device.switch(command.switch.model_version)
        return active, f"active {active}"

    def _do_rollback(self, command: fleet_pb2.ControllerCommand) -> tuple[str, str]:
        active = self.device.rollback(command.rollback.to_version)
        return active, f"rolled back ({command.rollback.reason[:200]}); active {active or 'none'}"

    def _do_pipeline(self, command: fleet_pb2.ControllerCommand) -> tuple[str, str]:
        return "", self.device.pipeline(command.pipeline)

    # -- run
    def run(self) -> None:
        try:
            self.client.serve_forever(self.on_command, self.hello, self.slot_versions)
        finally:
            if self._urls is not None:
                self._urls.close()


def device_identity(settings: AgentSettings, profile: fleet_pb2.HardwareProfile) -> AgentIdentity:
    """What the device tells the controller at registration: name, probed hardware, what it can build, tags."""
    return AgentIdentity(
        name=settings.name or socket.gethostname(),
        hardware=profile,
        capabilities=capabilities(profile),
        tags=list(settings.tags),
    )


def run(settings: AgentSettings, runtime: AgentRuntime) -> int:
    """Enrol (or reuse the saved credentials), publish telemetry under the id the controller
    assigned, then follow its commands until the process is stopped. Exit codes: 2 = not
    enrolled and no token, 3 = the controller refused the device."""
    identity = device_identity(settings, runtime.profile)
    client = FleetClient(
        settings.controller,
        settings.agent_dir,
        identity,
        settings.enrollment_token or "",
        enroll_target=settings.enroll_target or "",
        ca_fingerprint=settings.ca_fingerprint or "",
        ca_pem=settings.ca_file.read_bytes() if settings.ca_file else b"",
        insecure=settings.insecure,
    )
    if client.credentials is None and not settings.enrollment_token:
        log.error("not enrolled yet: pass --enrollment-token-file FILE or set EDGELOOP_ENROLLMENT_TOKEN")
        return 2
    try:
        creds = client.credentials if client.credentials is not None else client.register()
        # the operator's broker (flag or environment) over the one the controller names
        runtime.attach_telemetry(
            creds.device_id, settings.mqtt_url or creds.telemetry_url, creds.telemetry_prefix
        )
        FleetAgent(client, runtime).run()
    except DeviceRefused as exc:
        log.error("%s", exc)
        return 3
    finally:
        client.close()
    return 0
