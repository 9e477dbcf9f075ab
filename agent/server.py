"""Open Inference Protocol (KServe v2) gRPC server: the thin protocol layer over the dataplane.

Each servicer method only translates: protobuf -> dataplane types -> protobuf. Domain errors
become status codes in one place (``STATUS_OF`` + ``_grpc_errors``); a malformed request gets
INVALID_ARGUMENT with a message and the server stays up. Triton's statistics and model
repository extensions answer from the same dataplane as ``agent.http_server``. Tensors travel as raw bytes
(``raw_input_contents``/``raw_output_contents``, what tritonclient sends), typed ``contents``
are accepted too. Works with unmodified tritonclient / KServe clients.
"""

from __future__ import annotations

import functools
import logging
from concurrent import futures

import grpc
import numpy as np

from agent.auth import BearerToken, TokenInterceptor
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
from protos import inference_pb2, inference_pb2_grpc
from protos.ports import NO_REUSEPORT, bind_grpc

log = logging.getLogger(__name__)

# domain error -> gRPC status, the one mapping (first match wins, most specific first)
STATUS_OF: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (ModelNotFound, grpc.StatusCode.NOT_FOUND),
    (ModelNotReady, grpc.StatusCode.UNAVAILABLE),
    (BackendUnavailable, grpc.StatusCode.FAILED_PRECONDITION),
    (ArtifactError, grpc.StatusCode.FAILED_PRECONDITION),
    (HealthCheckFailed, grpc.StatusCode.FAILED_PRECONDITION),
    (Refused, grpc.StatusCode.FAILED_PRECONDITION),
    (AgentError, grpc.StatusCode.INTERNAL),
)

# typed contents field per datatype (FP16/BF16 travel only as raw bytes)
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}
MAX_MESSAGE_BYTES = 256 * 1024 * 1024


def status_for(exc: Exception) -> grpc.StatusCode:
    for cls, code in STATUS_OF:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _grpc_errors(method):
    """Map domain errors to status codes; anything unexpected is INTERNAL and logged."""

    @functools.wraps(method)
    def wrapper(self, request, context):
        try:
            return method(self, request, context)
        except AgentError as exc:
            context.abort(status_for(exc), str(exc))
        except Exception as exc:  # a bug, not the client's fault: keep serving
            log.exception("%s failed", method.__name__)
            context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")

    return wrapper


def decode_request(pb: inference_pb2.ModelInferRequest, limits: Limits) -> InferRequest:
    """Protobuf -> dataplane request; every size and type mismatch is ``InvalidInput``."""
    raw = list(pb.raw_input_contents)
    if raw and len(raw) != len(pb.inputs):
        raise InvalidInput(f"{len(raw)} raw_input_contents for {len(pb.inputs)} inputs")
    inputs = []
    for i, t in enumerate(pb.inputs):
        shape = tuple(int(d) for d in t.shape)
        dtype, expected = tensor_bytes(t.name, t.datatype, shape, limits)
        count = expected // dtype.itemsize
        if raw:
            if len(raw[i]) != expected:
                raise InvalidInput(
                    f"input {t.name!r}: {len(raw[i])} raw bytes, shape {list(shape)} of {t.datatype} needs {expected}"
                )
            data = np.frombuffer(raw[i], dtype=dtype).reshape(shape)
        else:
            field = _CONTENTS_FIELD.get(t.datatype)
            if field is None:
                raise InvalidInput(f"input {t.name!r}: {t.datatype} must be sent as raw_input_contents")
            values = getattr(t.contents, field)
            if len(values) != count:
                raise InvalidInput(
                    f"input {t.name!r}: {len(values)} values in contents, shape {list(shape)} needs {count}"
                )
            data = np.asarray(values, dtype=dtype).reshape(shape)
        inputs.append(Tensor(t.name, t.datatype, shape, data))
    return InferRequest(
        model_name=pb.model_name,
        model_version=pb.model_version,
        id=pb.id,
        inputs=inputs,
        outputs=[o.name for o in pb.outputs],
    )


class InferenceServicer(inference_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    @_grpc_errors
    def ServerLive(self, request, context):
        return inference_pb2.ServerLiveResponse(live=self.dataplane.live())

    @_grpc_errors
    def ServerReady(self, request, context):
        return inference_pb2.ServerReadyResponse(ready=self.dataplane.ready())

    @_grpc_errors
    def ModelReady(self, request, context):
        return inference_pb2.ModelReadyResponse(
            ready=self.dataplane.model_ready(request.name, request.version)
        )

    @_grpc_errors
    def ServerMetadata(self, request, context):
        name, version, extensions = self.dataplane.server_metadata()
        return inference_pb2.ServerMetadataResponse(name=name, version=version, extensions=extensions)

    @_grpc_errors
    def ModelMetadata(self, request, context):
        meta = self.dataplane.model_metadata(request.name, request.version)

        def tm(t: Tensor):
            return inference_pb2.ModelMetadataResponse.TensorMetadata(
                name=t.name, datatype=t.datatype, shape=list(t.shape)
            )

        return inference_pb2.ModelMetadataResponse(
            name=meta.name,
            versions=meta.versions,
            platform=meta.platform,
            inputs=[tm(t) for t in meta.inputs],
            outputs=[tm(t) for t in meta.outputs],
        )

    @_grpc_errors
    def ModelInfer(self, request, context):
        response = self.dataplane.infer(decode_request(request, self.dataplane.limits))
        out = inference_pb2.ModelInferResponse(
            model_name=response.model_name, model_version=response.model_version, id=response.id
        )
        for t in response.outputs:
            out.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
            out.raw_output_contents.append(np.ascontiguousarray(t.data).tobytes())
        return out

    @_grpc_errors
    def ModelStatistics(self, request, context):
        return statistics_pb(self.dataplane.statistics(request.name, request.version))

    @_grpc_errors
    def RepositoryIndex(self, request, context):
        out = inference_pb2.RepositoryIndexResponse()
        for m in self.dataplane.repository_index(request.ready):
            out.models.add(name=m.name, version=m.version, state=m.state, reason=m.reason)
        return out

    @_grpc_errors
    def RepositoryModelLoad(self, request, context):
        self.dataplane.load_model(request.model_name)
        return inference_pb2.RepositoryModelLoadResponse()

    @_grpc_errors
    def RepositoryModelUnload(self, request, context):
        self.dataplane.unload_model(request.model_name)
        return inference_pb2.RepositoryModelUnloadResponse()


def _duration(pb, d) -> None:
    pb.count, pb.ns = d.count, d.ns


def statistics_pb(models) -> inference_pb2.ModelStatisticsResponse:
    """``ModelStats`` -> Triton's ``ModelStatisticsResponse`` (the HTTP twin: stats.statistics_json)."""
    out = inference_pb2.ModelStatisticsResponse()
    for m in models:
        pb = out.model_stats.add(name=m.name, version=m.version, last_inference=m.last_inference_ms,
                                 inference_count=m.inference_count, execution_count=m.execution_count)  # fmt: skip
        st = pb.inference_stats
        for part in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
            _duration(getattr(st, part), getattr(m, part))
        for size, b in sorted(m.batches.items()):
            bs = pb.batch_stats.add(batch_size=size)
            for part in ("compute_input", "compute_infer", "compute_output"):
                _duration(getattr(bs, part), getattr(b, part))
    return out


class InferenceServer:
    """A running gRPC server on ``host:port`` (port 0 = a free one, see ``.port``). ``token``:
    the bearer token every call but liveness/readiness must carry (None = open). A message
    larger than the dataplane's request limit (plus room for the protobuf framing) is refused
    by gRPC itself (RESOURCE_EXHAUSTED) before it is buffered whole."""

    def __init__(
        self,
        dataplane: DataPlane,
        *,
        host: str = "127.0.0.1",
        port: int = 8001,
        workers: int = 8,
        token: str | None = None,
    ) -> None:
        self.dataplane = dataplane
        receive = min(dataplane.limits.max_bytes + 64 * 1024, MAX_MESSAGE_BYTES)
        options = [
            ("grpc.max_receive_message_length", receive),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            NO_REUSEPORT,  # a second agent on this port fails instead of sharing its clients
        ]
        interceptors = [TokenInterceptor(BearerToken(token))] if token else []
        self._server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers), options=options, interceptors=interceptors
        )
        inference_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(dataplane), self._server
        )
        self.port = bind_grpc(self._server, host, port)
        self.host = host

    def start(self) -> InferenceServer:
        self._server.start()
        log.info("Open Inference Protocol gRPC server on %s:%d", self.host, self.port)
        return self

    def wait(self) -> None:
        self._server.wait_for_termination()

    def stop(self, grace: float = 2.0) -> None:
        self._server.stop(grace).wait()

    def __enter__(self) -> InferenceServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
