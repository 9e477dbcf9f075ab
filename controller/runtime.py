"""The lifecycle of one running controller: the composition root.

``Controller(settings).start()`` opens the database (migrations, recovery of what a stopped
controller left), loads the signing key, starts the broker and telemetry, builds the one
``ControllerContext`` the parts share, then the gRPC fleet service, the background workers
(``controller/workers.py``), the loop runner and, optionally, the HTTP server; ``stop()`` stops
them in reverse. A started ``Controller`` is also the in-process API (``controller/inprocess.py``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from controller.broker import LocalBroker, free_port, start_local_broker
from controller.broker_auth import BrokerAccounts
from controller.context import ControllerContext
from controller.core.config import Settings
from controller.db import make_engine, migrate, session_scope
from controller.grpc.server import GrpcServer
from controller.inprocess import InProcessAPI
from controller.loop.service import LoopRunner
from controller.main import create_app
from controller.metrics import Metrics
from controller.services import instances, jobs
from controller.services.bus_listener import BusListener
from controller.services.ca import load_or_create_ca
from controller.services.hub import SessionHub
from controller.services.signing import load_or_create_signer
from controller.services.storage import store_from_settings
from controller.telemetry import TelemetryIngest
from controller.workers import run_job_runner, run_liveness, run_rollout_engine, run_status_writer

log = logging.getLogger(__name__)


class Controller(InProcessAPI):
    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.settings = settings
        self.broker: LocalBroker | None = None
        self.broker_accounts: BrokerAccounts | None = None
        self.telemetry: TelemetryIngest | None = None
        self.grpc: GrpcServer | None = None
        self.http: uvicorn.Server | None = None
        self.http_port: int | None = None
        self.loops: LoopRunner | None = None
        self.bus: BusListener | None = None
        self._sqlite_lock: int | None = None  # the fd of the one-process lock beside a SQLite file
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    # ------------------------------------------------------------ start
    def start(self, *, http: bool = False, telemetry: bool = True) -> Controller:
        """Start everything; a part that fails (a taken port) stops what had started, then raises."""
        try:
            return self._start(http=http, telemetry=telemetry)
        except BaseException:
            self.stop()
            raise

    def _start(self, *, http: bool, telemetry: bool) -> Controller:
        s = self.settings
        s.resolve_secrets()
        if s.database_url.startswith("sqlite:///") and not s.database_url.endswith(":memory:"):
            self._sqlite_lock = instances.claim_sqlite(Path(s.database_url.removeprefix("sqlite:///")))
        engine = make_engine(s.database_url)
        migrate(engine)
        with session_scope(engine) as session:
            instances.join(session=session, instance_id=s.instance_id, database=engine.dialect.name)
            jobs.recover_interrupted(session=session)
        signer = load_or_create_signer(s.keys_dir)
        metrics = Metrics()
        streams: dict[str, dict] = {}  # filled by telemetry, read by the API
        mqtt_url = self._start_telemetry(engine, metrics, streams) if telemetry else ""
        ca = None if s.insecure else load_or_create_ca(s.keys_dir, s.tls_names)
        if s.insecure:
            log.warning(
                "--insecure: plaintext gRPC, device tokens in metadata (no TLS, no client certificates)"
            )
        ctx = ControllerContext(settings=s, engine=engine, signer=signer, metrics=metrics, mqtt_url=mqtt_url,
                                hub=SessionHub(s.instance_id),
                                store=store_from_settings(s), ca=ca,
                                broker_accounts=self.broker_accounts, streams=streams)  # fmt: skip
        self._ctx = ctx
        self.bus = BusListener(engine, ctx.hub, on_kick=self._kicked).start()
        self.grpc = GrpcServer(ctx, s.grpc_host, s.grpc_port).start()
        self._spawn("rollout-engine", lambda: run_rollout_engine(ctx, self._stop))
        self._spawn("status-writer", lambda: run_status_writer(ctx, self._stop))
        self._spawn("job-runner", lambda: run_job_runner(ctx, self._stop))
        self._spawn("controller-liveness", lambda: run_liveness(ctx, self._stop))
        self.loops = LoopRunner(ctx)
        if http:
            self.start_http()
        return self

    def _kicked(self, device_id: str) -> None:
        """Another controller revoked or re-enrolled the device: its streams and cached
        credential here end too."""
        self.ctx.tokens.drop(device_id)
        self.ctx.hub.kick(device_id)

    def _start_telemetry(
        self, engine: Engine, metrics: Metrics, streams: dict[str, dict] | None = None
    ) -> str:
        """The broker URL telemetry listens on ("" when there is none)."""
        url = self.settings.mqtt_url
        if not url and self.settings.start_broker:
            try:
                if self.settings.insecure:
                    self.broker = start_local_broker()  # anonymous: only with --insecure
                    url = self.broker.url
                else:
                    accounts = BrokerAccounts(self.settings.data_dir / "mqtt", self.settings.telemetry_prefix)
                    self.broker = start_local_broker("mosquitto", passwd=accounts.passwd, acl=accounts.acl)
                    accounts.reload = self.broker.reload
                    self.broker_accounts = accounts
                    url = accounts.controller_url(self.broker.host, self.broker.port)
            except Exception as exc:
                log.warning("no MQTT broker could be started (%s): telemetry off", exc)
        if not url:
            return ""
        self.telemetry = TelemetryIngest(
            engine=engine,
            metrics=metrics,
            url=url,
            prefix=self.settings.telemetry_prefix,
            streams=streams,
            client_id=self.settings.mqtt_session_id,
            share_group=self.settings.telemetry_share_group or "",
        ).start()
        return url

    def app(self) -> FastAPI:
        """The REST API and dashboard of this started controller, for any ASGI server."""
        if self.loops is None:
            raise RuntimeError("the controller is not started (call start() first)")
        return create_app(self.ctx, self.loops, grpc_port=self.grpc_port)

    def start_http(self) -> int:
        port = self.settings.http_port or free_port()
        config = uvicorn.Config(
            self.app(), host=self.settings.http_host, port=port, log_level="warning", access_log=False
        )
        self.http = uvicorn.Server(config)
        self._spawn("http", self.http.run)
        deadline = time.monotonic() + 20
        while not self.http.started and time.monotonic() < deadline:
            time.sleep(0.05)
        if not self.http.started:
            raise RuntimeError(f"HTTP server did not start on port {port}")
        self.http_port = port
        return port

    def _spawn(self, name: str, target: Callable[[], object]) -> None:
        t = threading.Thread(target=target, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    # ------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop everything this controller started (the DB and data dir stay)."""
        self._stop.set()
        if self._ctx is not None:
            self._ctx.wake()
        if self.http is not None:
            self.http.should_exit = True
        if self.grpc is not None:
            self.grpc.stop(grace=0.5)
        for t in self._threads:
            t.join(timeout=15)
        if self.bus is not None:
            self.bus.stop()
        if self.telemetry is not None:
            self.telemetry.stop()
        if self.broker is not None:
            self.broker.stop()
        if self._ctx is not None:
            try:
                with session_scope(self._ctx.engine) as session:
                    instances.leave(session=session, instance_id=self.settings.instance_id)
            except Exception:  # the database may be gone already
                log.debug("could not remove this controller's instance row", exc_info=True)
            self._ctx.engine.dispose()
        if self._sqlite_lock is not None:
            os.close(self._sqlite_lock)
            self._sqlite_lock = None

    # ------------------------------------------------------------ where agents reach it
    @property
    def public_mqtt_url(self) -> str | None:
        """The broker telemetry uses (None when telemetry is off)."""
        return (self._ctx.mqtt_url if self._ctx else "") or None

    @property
    def grpc_port(self) -> int:
        return self.grpc.port if self.grpc else self.settings.grpc_port

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def enroll_target(self) -> str:
        """Where agents enrol over TLS ("" with --insecure: they register on the gRPC port)."""
        return f"127.0.0.1:{self.grpc.enroll_port}" if self.grpc and self.grpc.enroll_port else ""

    @property
    def ca_fingerprint(self) -> str:
        """What the enrolment command carries so an agent pins this controller's CA."""
        return self._ctx.ca.fingerprint if self._ctx is not None and self._ctx.ca is not None else ""
