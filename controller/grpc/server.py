"""FleetService over grpc.aio, in its own thread and event loop.

The servicer only translates: credentials from metadata, protos in and out, domain errors to
status codes (``STATUS_FOR``). Database work runs in a small thread pool so a thousand open
streams share one event loop; heartbeats are kept in memory and flushed in batches.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc
from sqlmodel import Session

from controller import crud
from controller.context import ControllerContext
from controller.db import session_scope
from controller.errors import (
    Conflict,
    ControllerError,
    InvalidInput,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from controller.models import CommandState
from controller.services import bus, enrollment, fleet
from controller.services.ca import ControllerCA, peer_identity
from controller.services.commands import command_to_proto
from controller.services.hub import StreamSession
from controller.services.limits import check_device_message
from controller.services.storage import stamp_urls
from protos import fleet_pb2, fleet_pb2_grpc
from protos.chunks import encode_chunk
from protos.ports import NO_REUSEPORT, bind_grpc
from protos.redact import without_credentials

log = logging.getLogger(__name__)
T = TypeVar("T")

STATUS_FOR: dict[type[ControllerError], grpc.StatusCode] = {
    InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Conflict: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", 16 << 20),
    ("grpc.max_receive_message_length", 16 << 20),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
    ("grpc.http2.max_pings_without_data", 0),
    NO_REUSEPORT,  # a second controller on this port fails instead of taking part of the fleet
]
HELLO_TIMEOUT_S = 30.0
SERVICE_NAME = fleet_pb2.DESCRIPTOR.services_by_name["FleetService"].full_name


@dataclass
class _ArtifactFile:
    path: str
    size: int
    sha256: str


def agent_mqtt_url(url: str) -> str:
    """The broker URL agents are told at Register, without the controller's own user:password
    (each agent authenticates to the broker with its own account)."""
    return without_credentials(url)


class ChunkCache:
    """LRU of serialized chunks, bounded in bytes. Only touched from the gRPC event loop."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.size = 0
        self._items: OrderedDict[tuple, bytes] = OrderedDict()

    def get(self, key: tuple) -> bytes | None:
        msg = self._items.get(key)
        if msg is not None:
            self._items.move_to_end(key)
        return msg

    def put(self, key: tuple, msg: bytes) -> None:
        if len(msg) > self.max_bytes or key in self._items:
            return
        self._items[key] = msg
        self.size += len(msg)
        while self.size > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.size -= len(old)


def _passthrough(msg: bytes | fleet_pb2.ArtifactChunk) -> bytes:
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


def add_servicer(servicer: FleetServicer, server: grpc.aio.Server) -> None:
    """The generated registration, except that DownloadArtifact yields already-serialized chunks."""
    handlers = {
        "Register": grpc.unary_unary_rpc_method_handler(
            servicer.Register,
            request_deserializer=fleet_pb2.RegisterRequest.FromString,
            response_serializer=fleet_pb2.RegisterResponse.SerializeToString,
        ),
        "Connect": grpc.stream_stream_rpc_method_handler(
            servicer.Connect,
            request_deserializer=fleet_pb2.AgentMessage.FromString,
            response_serializer=fleet_pb2.ControllerCommand.SerializeToString,
        ),
        "DownloadArtifact": grpc.unary_stream_rpc_method_handler(
            servicer.DownloadArtifact,
            request_deserializer=fleet_pb2.DownloadRequest.FromString,
            response_serializer=_passthrough,
        ),
        "ReportResult": grpc.unary_unary_rpc_method_handler(
            servicer.ReportResult,
            request_deserializer=fleet_pb2.ResultReport.FromString,
            response_serializer=fleet_pb2.ReportAck.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


REPORT_COALESCE_S = 0.02  # after a report comes, how long others are gathered into its transaction


class ReportBatcher:
    """Measured reports written together: those that arrive within ``REPORT_COALESCE_S`` of one
    another go into one transaction (``fleet.record_reports``, one thread-pool job), and each
    caller gets its own result id or the error that refused its report. Only touched from the
    gRPC event loop."""

    def __init__(self, run: Callable[..., Awaitable[list]]) -> None:
        self._run = run  # FleetServicer._db
        self._items: list[tuple[str, fleet_pb2.Report, asyncio.Future]] = []
        self._writing: set[asyncio.Task] = set()

    async def submit(self, device_id: str, report: fleet_pb2.Report) -> str:
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        if not self._items:
            loop.call_later(REPORT_COALESCE_S, self._flush)
        self._items.append((device_id, report, future))
        return await future

    def _flush(self) -> None:
        items, self._items = self._items, []
        task = asyncio.ensure_future(self._write(items))
        self._writing.add(task)  # a reference until done (the loop keeps only weak ones)
        task.add_done_callback(self._writing.discard)

    async def _write(self, items: list[tuple[str, fleet_pb2.Report, asyncio.Future]]) -> None:
        try:
            outcomes = await self._run(fleet.record_reports, seen=[(d, r) for d, r, _ in items])
        except Exception as exc:  # the transaction is gone: every caller hears it (agents resend)
            for *_, future in items:
                if not future.done():
                    future.set_exception(exc)
            return
        for (*_, future), outcome in zip(items, outcomes, strict=True):
            if future.done():  # the caller went away
                continue
            if isinstance(outcome, ControllerError):
                future.set_exception(outcome)
            else:
                future.set_result(outcome.id)


class FleetServicer(fleet_pb2_grpc.FleetServiceServicer):
    def __init__(self, ctx: ControllerContext, pool: ThreadPoolExecutor) -> None:
        self.ctx = ctx
        self.pool = pool
        self._reports = ReportBatcher(self._db)
        self._artifacts: dict[str, _ArtifactFile] = {}
        self._chunks = ChunkCache(ctx.settings.artifact_cache_bytes)
        self._sent: set[tuple[str, str]] = set()
        self._peers: dict[
            bytes, tuple[str, int]
        ] = {}  # client certificate PEM -> (device id, serial)  # (device, artifact) pairs a command named

    # -- plumbing
    async def _db(self, fn: Callable[..., T], /, **kwargs: object) -> T:
        def unit() -> T:
            with session_scope(self.ctx.engine) as session:
                return fn(session=session, **kwargs)

        return await asyncio.get_running_loop().run_in_executor(self.pool, unit)

    async def _abort(self, context: grpc.aio.ServicerContext, exc: ControllerError) -> NoReturn:
        code = next(
            (c for t, c in STATUS_FOR.items() if isinstance(exc, t)), grpc.StatusCode.INVALID_ARGUMENT
        )
        await context.abort(code, exc.message)
        raise RuntimeError("grpc context.abort returned")  # it raises; this tells the type checker

    def _credential(self, context: grpc.aio.ServicerContext) -> tuple[str, str]:
        """(device id, secret) the call presents: with TLS, the common name and serial of the
        verified client certificate (never anything the request says); with --insecure, the
        metadata token."""
        if self.ctx.ca is not None:
            pems = (context.auth_context() or {}).get("x509_pem_cert") or []
            if not pems:
                return "", ""
            ident = self._peers.get(pems[0])
            if ident is None:
                ident = peer_identity(pems[0])
                if len(self._peers) > 10_000:
                    self._peers.clear()
                self._peers[pems[0]] = ident
            return ident[0], fleet.cert_secret(ident[1])
        md = {k: v for k, v in context.invocation_metadata() or ()}
        auth = md.get("authorization", "")
        return md.get("x-edgeloop-device", ""), auth[7:] if auth.lower().startswith("bearer ") else ""

    async def _check(self, device_id: str, secret: str) -> None:
        known = self.ctx.tokens.get(device_id) if device_id and secret else None
        if known is not None and hmac.compare_digest(known, fleet.hash_token(secret)):
            return  # cached: no DB round trip for the common case
        await self._db(fleet.authenticate, cache=self.ctx.tokens, device_id=device_id, token=secret)

    async def _auth(self, context: grpc.aio.ServicerContext) -> str:
        device_id, secret = self._credential(context)
        if self.ctx.ca is not None and not device_id:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED,
                "a client certificate of this controller's CA is required (enrol first)",
            )
        try:
            await self._check(device_id, secret)
        except ControllerError as exc:
            await self._abort(context, exc)
        return device_id

    async def _caller(self, context: grpc.aio.ServicerContext) -> str:
        """The device a Register comes from when it proves one with its own credential, else ""."""
        device_id, secret = self._credential(context)
        if not device_id or not secret:
            return ""
        try:
            await self._check(device_id, secret)
        except ControllerError:
            return ""
        return device_id

    # -- RPCs
    async def Register(self, request: fleet_pb2.RegisterRequest, context: grpc.aio.ServicerContext):
        caller = await self._caller(context)
        try:
            done = await self._db(
                self._enrol,
                request=request,
                bootstrap=self.ctx.settings.enrollment_token or "",
                ca=self.ctx.ca,
                caller=caller,
            )
        except ControllerError as exc:
            log.info("register refused (%s): %s", context.peer(), exc.message)
            await self._abort(context, exc)
        device = done.device
        self.ctx.tokens.put(device.id, device.token_hash)
        if caller != device.id:
            self.ctx.hub.kick(device.id)  # an operator re-enrolment: streams of the old credential end
        mqtt_user = mqtt_password = ""
        if self.ctx.broker_accounts is not None:
            mqtt_user, mqtt_password = device.id, done.mqtt_password
            self.ctx.broker_accounts.set(mqtt_user, mqtt_password)
        log.info("device %s (%s, %s) registered", device.id, device.name, device.hardware_class)
        return fleet_pb2.RegisterResponse(
            device_id=device.id,
            device_token=done.device_token,
            artifact_signing_public_key=self.ctx.signer.public_key_bytes,
            mqtt_url=agent_mqtt_url(self.ctx.settings.mqtt_url or self.ctx.mqtt_url),
            telemetry_prefix=self.ctx.settings.telemetry_prefix,
            heartbeat_interval_s=self.ctx.settings.heartbeat_interval_s,
            client_certificate_pem=done.certificate_pem,
            ca_certificate_pem=self.ctx.ca.cert_pem if self.ctx.ca is not None else b"",
            mqtt_username=mqtt_user,
            mqtt_password=mqtt_password,
        )

    async def Connect(
        self, request_iterator: AsyncIterator[fleet_pb2.AgentMessage], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[fleet_pb2.ControllerCommand]:
        device_id = await self._auth(context)
        try:
            first = await asyncio.wait_for(request_iterator.__anext__(), HELLO_TIMEOUT_S)
        except (StopAsyncIteration, asyncio.TimeoutError):
            return
        hello = first.hello if first.HasField("hello") else fleet_pb2.Hello()
        try:
            check_device_message(hello, "hello")
        except ControllerError as exc:
            await self._abort(context, exc)
        loop = asyncio.get_running_loop()
        session = StreamSession(device_id=device_id, loop=loop, queue=asyncio.Queue())
        self.ctx.hub.attach(session)
        self.ctx.metrics.streams.inc()
        reader: asyncio.Task | None = None
        try:
            backlog = await self._db(fleet.record_connected, device_id=device_id, hello=hello, connected=True,
                                     controller_id=self.ctx.hub.instance_id)  # fmt: skip
            for command in backlog:
                session.queue.put_nowait(command_to_proto(command))
            reader = asyncio.create_task(self._read(device_id, request_iterator, session))
            while True:
                command = await session.queue.get()
                if command is None:
                    break
                yield self._with_urls(device_id, command)
        finally:
            self.ctx.metrics.streams.dec()
            if reader is not None:
                reader.cancel()
            if self.ctx.hub.detach(session):
                try:
                    await self._db(fleet.record_connected, device_id=device_id, hello=None, connected=False,
                                   controller_id=self.ctx.hub.instance_id)  # fmt: skip
                except Exception:  # the DB may be going away with the controller
                    log.debug("could not record disconnect of %s", device_id, exc_info=True)

    async def _read(
        self, device_id: str, request_iterator: AsyncIterator[fleet_pb2.AgentMessage], session: StreamSession
    ) -> None:
        try:
            async for msg in request_iterator:
                kind = msg.WhichOneof("body")
                if kind == "heartbeat":
                    hb = msg.heartbeat
                    try:
                        check_device_message(hb, "heartbeat")
                    except ControllerError as exc:
                        log.warning("heartbeat from %s ignored: %s", device_id, exc.message)
                        continue
                    self.ctx.hub.note_heartbeat(
                        device_id, hb.active_version, hb.candidate_version, hb.previous_version
                    )
                elif kind == "status":
                    try:
                        check_device_message(msg.status, "status")
                    except ControllerError as exc:
                        log.warning("bad status from %s: %s", device_id, exc.message)
                        continue
                    if msg.status.state == CommandState.running.value:  # progress: the latest, batched
                        self.ctx.hub.note_progress(device_id, msg.status)
                    else:  # written in batches by the status writer, which wakes the engine
                        self.ctx.hub.note_status(device_id, msg.status)
                elif kind == "hello":
                    try:
                        await self._db(fleet.record_connected, device_id=device_id, hello=msg.hello,
                                       connected=True, controller_id=self.ctx.hub.instance_id)  # fmt: skip
                    except ControllerError as exc:
                        log.warning("bad hello from %s: %s", device_id, exc.message)
        except (asyncio.CancelledError, grpc.aio.AioRpcError):
            pass
        except Exception:
            log.exception("control stream of %s failed", device_id)
        finally:
            session.queue.put_nowait(None)

    def _enrol(
        self, *, session: Session, request: fleet_pb2.RegisterRequest, bootstrap: str, ca: ControllerCA | None,
        caller: str,
    ) -> enrollment.Enrolled:  # fmt: skip
        """Enrol; an operator's re-enrolment (not the device renewing its own credential) also
        ends the device's streams on the other controller processes, at the same commit."""
        done = enrollment.enrol(session=session, request=request, bootstrap=bootstrap, ca=ca, caller=caller)
        if caller != done.device.id:
            bus.publish(session, origin=self.ctx.hub.instance_id, kind=bus.KICK, device_id=done.device.id)
        return done

    def _with_urls(self, device_id: str, command: fleet_pb2.ControllerCommand) -> fleet_pb2.ControllerCommand:
        """Fresh expiring URLs for the artifacts the command names, for this device only, made as
        the command goes onto its stream (never stored; a resent command gets new ones)."""
        if self.ctx.store is None:
            return command
        return stamp_urls(
            command, self.ctx.store, device_id=device_id, ttl_s=self.ctx.settings.artifact_url_ttl_s
        )

    def _artifact_file(self, session: Session, artifact_id: str) -> _ArtifactFile:
        art = crud.get_artifact(session=session, artifact_id=artifact_id)
        return _ArtifactFile(path=art.path, size=art.size_bytes, sha256=art.sha256)

    async def DownloadArtifact(self, request: fleet_pb2.DownloadRequest, context: grpc.aio.ServicerContext):
        """Chunks aligned to ``chunk_size`` boundaries, pre-serialized and kept in an LRU cache, so a
        rollout to many devices reads and encodes each chunk once."""
        device_id = await self._auth(context)
        if (device_id, request.artifact_id) not in self._sent:
            sent = await self._db(
                fleet.artifact_sent_to, device_id=device_id, artifact_id=request.artifact_id
            )
            if not sent:
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED,
                    f"artifact {request.artifact_id[:64]!r} was not sent to this device",
                )
            self._sent.add((device_id, request.artifact_id))
        info = self._artifacts.get(request.artifact_id)
        if info is None:
            try:
                info = await self._db(self._artifact_file, artifact_id=request.artifact_id)
            except ControllerError as exc:
                await self._abort(context, exc)
            self._artifacts[request.artifact_id] = info
        if request.offset < 0 or request.offset > info.size:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE, f"offset {request.offset} outside 0..{info.size}"
            )
        chunk = request.chunk_size or self.ctx.settings.artifact_chunk_bytes
        chunk = max(4096, min(chunk, 8 << 20))
        offset = request.offset
        if offset == info.size:
            yield encode_chunk(offset, b"", info.size, info.sha256)
            return
        fd: int | None = None
        try:
            while offset < info.size:
                end = min((offset // chunk + 1) * chunk, info.size)
                key = (request.artifact_id, offset, end)
                msg = self._chunks.get(key)
                if msg is None:
                    if fd is None:
                        try:
                            fd = os.open(info.path, os.O_RDONLY)
                        except OSError as exc:
                            await context.abort(
                                grpc.StatusCode.NOT_FOUND, f"artifact file missing on the controller: {exc}"
                            )
                            raise  # not reached: abort raises
                    data = os.pread(fd, end - offset, offset)
                    if len(data) != end - offset:
                        await context.abort(grpc.StatusCode.DATA_LOSS, "artifact file shorter than recorded")
                    msg = encode_chunk(offset, data, info.size, info.sha256)
                    self._chunks.put(key, msg)
                yield msg
                self.ctx.metrics.bytes_served.inc(end - offset)
                offset = end
        finally:
            if fd is not None:
                os.close(fd)

    async def ReportResult(self, request: fleet_pb2.ResultReport, context: grpc.aio.ServicerContext):
        device_id = await self._auth(context)
        try:
            result_id = await self._reports.submit(device_id, request.report)
        except ControllerError as exc:
            await self._abort(context, exc)
        self.ctx.metrics.reports.inc()
        self.ctx.wake()
        return fleet_pb2.ReportAck(result_id=result_id)


class GrpcServer:
    """Runs the servicer in a thread with its own event loop; ``port`` is the bound one."""

    def __init__(self, ctx: ControllerContext, host: str, port: int) -> None:
        self.ctx = ctx
        self.host, self.port = host, port
        self.enroll_port = 0  # the TLS enrolment port (0 with --insecure)
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: grpc.aio.Server | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="grpc-db")
        self._stopping: asyncio.Event | None = None
        self._grace = 1.0

    def start(self) -> GrpcServer:
        self._thread = threading.Thread(target=self._run, name="grpc-server", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # reported to start()
            self._error = exc
            self._ready.set()
        finally:
            pending = asyncio.all_tasks(self._loop)
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    async def _serve(self) -> None:
        self._server = grpc.aio.server(options=SERVER_OPTIONS)
        add_servicer(FleetServicer(self.ctx, self._pool), self._server)
        ca = self.ctx.ca
        if ca is None:
            self.port = bind_grpc(self._server, self.host, self.port)
        else:
            mutual = grpc.ssl_server_credentials(
                [(ca.server_key_pem, ca.server_cert_pem)],
                root_certificates=ca.cert_pem,
                require_client_auth=True,
            )
            self.port = bind_grpc(self._server, self.host, self.port, mutual)
            # enrolment: server-only TLS with the CA's own certificate, which the agent pins
            enrol = grpc.ssl_server_credentials([(ca.key_pem, ca.cert_pem)])
            want = self.ctx.settings.enroll_port
            if want is None:
                want = self.port + 1 if self.ctx.settings.grpc_port else 0
            self.enroll_port = bind_grpc(self._server, self.host, want, enrol)
        await self._server.start()
        if ca is None:
            log.warning("gRPC fleet service on %s:%d WITHOUT TLS (--insecure)", self.host, self.port)
        else:
            log.info(
                "gRPC fleet service on %s:%d (mutual TLS), enrolment on %d (TLS, CA %s)",
                self.host, self.port, self.enroll_port, ca.fingerprint,
            )  # fmt: skip
        self._stopping = asyncio.Event()
        self._ready.set()
        await self._stopping.wait()
        await self._server.stop(self._grace)

    def stop(self, grace: float = 1.0) -> None:
        self._grace = grace
        if self._loop is not None and self._stopping is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._stopping.set)
        if self._thread is not None:
            self._thread.join(timeout=15)
        self._pool.shutdown(wait=False, cancel_futures=True)
