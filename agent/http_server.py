"""Open Inference Protocol (KServe v2) HTTP/REST server: the thin protocol layer over the dataplane.

The HTTP twin of ``agent.server``: each route only translates JSON (and Triton's binary tensor
extension) to the dataplane's types and back; the dataplane, the model repository and the
statistics are the same objects the gRPC server answers from. Starlette on uvicorn: an ASGI
toolkit without an ORM or a validation layer, so the agent stays small and torch-free.

Binary tensor extension (what ``tritonclient.http`` sends by default): the body is a JSON header
of ``Inference-Header-Content-Length`` bytes followed by the raw bytes of every input whose
``parameters.binary_data_size`` is set, in the order of ``inputs``. Outputs come back the same
way when the request asks (``outputs[].parameters.binary_data`` or the request's
``parameters.binary_data_output``), else as JSON ``data`` lists. Errors are ``{"error": msg}``
with a status from one table (``HTTP_STATUS_OF``); the server stays up.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
import zlib
from collections.abc import Callable

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from agent.auth import OPEN_HTTP_PATHS, BearerToken
from agent.dataplane import DataPlane, InferRequest, Limits, Tensor, tensor_bytes
from agent.errors import (
    AgentError,
    ArtifactError,
    BackendUnavailable,
    HealthCheckFailed,
    InvalidInput,
    ModelNotFound,
    ModelNotReady,
    Refused,
)
from agent.metrics import render_metrics
from agent.stats import statistics_json

log = logging.getLogger(__name__)

HEADER_LENGTH = "Inference-Header-Content-Length"
# domain error -> HTTP status, the one mapping (first match wins, most specific first)
HTTP_STATUS_OF: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInput, 400),
    (ModelNotFound, 404),
    (ModelNotReady, 503),
    (BackendUnavailable, 400),
    (ArtifactError, 400),
    (HealthCheckFailed, 400),
    (Refused, 409),
    (AgentError, 500),
)
JSON_HEADERS_ALLOWANCE = 1024 * 1024  # room for the JSON header beyond the tensor bytes


def status_for(exc: Exception) -> int:
    for cls, code in HTTP_STATUS_OF:
        if isinstance(exc, cls):
            return code
    return 500


def error(message: str, status: int) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _object(value: object, what: str) -> dict:
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object")
    return value


def _inputs(header: dict, tail: memoryview, limits: Limits) -> list[Tensor]:
    """The request's tensors: JSON ``data`` or binary bytes from ``tail``, every size checked."""
    items = header.get("inputs")
    if not isinstance(items, list) or not items:
        raise InvalidInput("'inputs' must be a non-empty list")
    tensors, offset = [], 0
    for item in items:
        item = _object(item, "each input")
        name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
        if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
            raise InvalidInput("each input needs 'name' (string), 'datatype' (string) and 'shape' (list)")
        dtype, nbytes = tensor_bytes(name, datatype, shape, limits)
        params = _object(item.get("parameters", {}), f"input {name!r} parameters")
        size = params.get("binary_data_size")
        if size is not None:
            if not isinstance(size, int) or isinstance(size, bool) or size != nbytes:
                raise InvalidInput(
                    f"input {name!r}: binary_data_size {size!r}, shape {shape} of {datatype} needs {nbytes}"
                )
            if offset + size > len(tail):
                raise InvalidInput(
                    f"input {name!r}: the body holds {len(tail) - offset} binary bytes, needs {size}"
                )
            data = np.frombuffer(tail[offset : offset + size], dtype=dtype).reshape(shape)
            offset += size
        else:
            if "data" not in item:
                raise InvalidInput(f"input {name!r}: neither 'data' nor parameters.binary_data_size")
            try:
                data = np.asarray(item["data"], dtype=dtype)
            except (ValueError, TypeError) as exc:
                raise InvalidInput(
                    f"input {name!r}: data is not a list of {datatype} values ({exc})"
                ) from exc
            if data.size * dtype.itemsize != nbytes:
                raise InvalidInput(
                    f"input {name!r}: {data.size} values in data, shape {shape} needs {nbytes // dtype.itemsize}"
                )
            data = data.reshape(shape)
        tensors.append(Tensor(name, datatype, tuple(shape), data))
    if offset != len(tail):
        raise InvalidInput(f"{len(tail) - offset} binary bytes after the last input")
    return tensors


def decode_infer(body: bytes, header_length: str | None, name: str, version: str, limits: Limits):
    """HTTP body -> (dataplane request, which outputs go back binary)."""
    view = memoryview(body)
    if header_length is not None:
        try:
            length = int(header_length)
        except ValueError as exc:
            raise InvalidInput(f"{HEADER_LENGTH} {header_length!r} is not an integer") from exc
        if not 0 < length <= len(body):
            raise InvalidInput(f"{HEADER_LENGTH} {length} does not fit a body of {len(body)} bytes")
        head, tail = view[:length], view[length:]
    else:
        head, tail = view, view[:0]
    try:
        header = _object(json.loads(bytes(head)), "the request")
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}") from exc
    request_id = header.get("id", "")
    if not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    params = _object(header.get("parameters", {}), "the request parameters")
    all_binary = bool(params.get("binary_data_output", False))
    outputs, binary = [], {}
    for out in header.get("outputs", []) or []:
        out = _object(out, "each output")
        if not isinstance(out.get("name"), str):
            raise InvalidInput("each output needs a 'name' (string)")
        outputs.append(out["name"])
        oparams = _object(out.get("parameters", {}), f"output {out['name']!r} parameters")
        binary[out["name"]] = bool(oparams.get("binary_data", all_binary))
    request = InferRequest(name, version, request_id, _inputs(header, tail, limits), outputs)
    return request, (lambda n: binary.get(n, all_binary))


def encode_infer(response, binary: Callable[[str], bool]) -> Response:
    outputs, chunks = [], []
    for t in response.outputs:
        entry = {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}
        if binary(t.name):
            raw = np.ascontiguousarray(t.data).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = t.data.ravel().tolist()
        outputs.append(entry)
    body = {"model_name": response.model_name, "model_version": response.model_version, "outputs": outputs}
    if response.id:
        body["id"] = response.id
    head = json.dumps(body, separators=(",", ":")).encode()
    if not chunks:
        return Response(head, media_type="application/json")
    return Response(b"".join([head, *chunks]), media_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(head))})  # fmt: skip


class _Guard:
    """ASGI middleware: the bearer token (if any) and the body limit, before any route runs."""

    def __init__(self, app, token: BearerToken, max_body: int) -> None:
        self.app, self.token, self.max_body = app, token, max_body

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if self.token.required and scope["path"] not in OPEN_HTTP_PATHS:
            if not self.token.allows(headers.get("authorization")):
                response = error("missing or wrong bearer token", 401)
                response.headers["WWW-Authenticate"] = "Bearer"
                return await response(scope, receive, send)
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await error(f"request body over this agent's limit of {self.max_body} bytes", 413)(
                scope, receive, send
            )
        return await self.app(scope, receive, send)


async def _body(request: Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes (a chunked upload without a length is cut there),
    then decompressed when ``Content-Encoding`` says gzip or deflate (bounded the same way)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise InvalidInput(f"request body over this agent's limit of {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("gzip", "deflate"):
        try:
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS)
            body = inflater.decompress(body, limit + 1)
        except (zlib.error, gzip.BadGzipFile) as exc:
            raise InvalidInput(f"the body is not valid {encoding}: {exc}") from exc
        if len(body) > limit:
            raise InvalidInput(f"request body over this agent's limit of {limit} bytes once decompressed")
    return body


def build_app(
    dataplane: DataPlane, token: str | None = None, metrics: Callable[[], bytes] | None = None
) -> Starlette:
    """The ASGI app of the HTTP/REST protocol over ``dataplane`` (tests mount it directly)."""
    limits = dataplane.limits
    max_body = limits.max_bytes + JSON_HEADERS_ALLOWANCE
    metrics = metrics or (lambda: render_metrics(dataplane))

    def handled(route):
        async def endpoint(request: Request) -> Response:
            try:
                return await route(request)
            except AgentError as exc:
                return error(str(exc), status_for(exc))
            except Exception as exc:  # a bug, not the client's fault: keep serving
                log.exception("%s %s failed", request.method, request.url.path)
                return error(f"{type(exc).__name__}: {exc}", 500)

        return endpoint

    def version_of(request: Request) -> str:
        return request.path_params.get("version", "")

    async def live(request: Request) -> Response:
        return Response(status_code=200 if dataplane.live() else 400)

    async def ready(request: Request) -> Response:
        return Response(status_code=200 if dataplane.ready() else 400)

    async def server_metadata(request: Request) -> Response:
        name, version, extensions = dataplane.server_metadata()
        return JSONResponse({"name": name, "version": version, "extensions": extensions})

    async def model_metadata(request: Request) -> Response:
        meta = dataplane.model_metadata(request.path_params["name"], version_of(request))

        def tm(t: Tensor) -> dict:
            return {"name": t.name, "datatype": t.datatype, "shape": list(t.shape)}

        return JSONResponse({"name": meta.name, "versions": meta.versions, "platform": meta.platform,
                             "inputs": [tm(t) for t in meta.inputs], "outputs": [tm(t) for t in meta.outputs]})  # fmt: skip

    async def model_ready(request: Request) -> Response:
        ok = dataplane.model_ready(request.path_params["name"], version_of(request))
        return Response(status_code=200 if ok else 400)

    async def model_config(request: Request) -> Response:
        return JSONResponse(dataplane.model_config(request.path_params["name"], version_of(request)))

    async def infer(request: Request) -> Response:
        body = await _body(request, max_body)
        req, binary = decode_infer(body, request.headers.get(HEADER_LENGTH), request.path_params["name"],
                                   version_of(request), limits)  # fmt: skip
        response = await run_in_threadpool(dataplane.infer, req)
        return encode_infer(response, binary)

    async def statistics(request: Request) -> Response:
        name = request.path_params.get("name", "")
        return JSONResponse(statistics_json(dataplane.statistics(name, version_of(request))))

    async def repository_index(request: Request) -> Response:
        body = await _body(request, JSON_HEADERS_ALLOWANCE)
        params = _object(json.loads(body or b"{}"), "the request") if body.strip() else {}
        ready_only = bool(params.get("ready", False))
        return JSONResponse([m.as_json() for m in dataplane.repository_index(ready_only)])

    async def repository_load(request: Request) -> Response:
        await _body(request, JSON_HEADERS_ALLOWANCE)
        await run_in_threadpool(dataplane.load_model, request.path_params["name"])
        return Response(status_code=200)

    async def repository_unload(request: Request) -> Response:
        await _body(request, JSON_HEADERS_ALLOWANCE)
        await run_in_threadpool(dataplane.unload_model, request.path_params["name"])
        return Response(status_code=200)

    async def prometheus(request: Request) -> Response:
        return Response(
            await run_in_threadpool(metrics), media_type="text/plain; version=0.0.4; charset=utf-8"
        )

    model = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", handled(live)),
        Route("/v2/health/ready", handled(ready)),
        Route("/v2", handled(server_metadata)),
        Route("/v2/models/stats", handled(statistics)),
        Route("/v2/repository/index", handled(repository_index), methods=["POST"]),
        Route("/v2/repository/models/{name}/load", handled(repository_load), methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", handled(repository_unload), methods=["POST"]),
        Route("/metrics", handled(prometheus)),
    ]
    for base in (model, versioned):
        routes += [
            Route(base, handled(model_metadata)),
            Route(base + "/ready", handled(model_ready)),
            Route(base + "/config", handled(model_config)),
            Route(base + "/stats", handled(statistics)),
            Route(base + "/infer", handled(infer), methods=["POST"]),
        ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return error(f"no route {request.method} {request.url.path}", getattr(exc, "status_code", 404))

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.add_middleware(_Guard, token=BearerToken(token), max_body=max_body)
    return app


class HttpInferenceServer:
    """A running HTTP/REST server on ``host:port`` (port 0 = a free one, see ``.port``). The
    socket is bound when constructed, so a port in use fails here, like the gRPC server."""

    def __init__(self, dataplane: DataPlane, *, host: str = "127.0.0.1", port: int = 8000,
                 token: str | None = None, metrics: Callable[[], bytes] | None = None) -> None:  # fmt: skip
        self.dataplane = dataplane
        self.host = host
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # accepted connections inherit it: uvicorn writes a response's head and body apart, and with
        # Nagle the body waited for the client's delayed ACK (40 ms a request on loopback)
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._socket.bind((host, port))
        except OSError as exc:
            self._socket.close()
            raise OSError(f"cannot listen on {host}:{port} (HTTP): {exc.strerror}") from exc
        self._socket.listen(128)
        self.port = self._socket.getsockname()[1]
        config = uvicorn.Config(build_app(dataplane, token, metrics), log_level="warning", lifespan="off",
                                access_log=False, timeout_graceful_shutdown=2)  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    def start(self) -> HttpInferenceServer:
        self._thread = threading.Thread(target=self._run, name="http-inference", daemon=True)
        self._thread.start()
        while not self._server.started and self._thread.is_alive():
            self._thread.join(0.01)
        if not self._server.started:
            raise OSError(f"the HTTP server on {self.host}:{self.port} did not start")
        log.info("Open Inference Protocol HTTP/REST server on %s:%d", self.host, self.port)
        return self

    def _run(self) -> None:
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._socket.close()

    def __enter__(self) -> HttpInferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
