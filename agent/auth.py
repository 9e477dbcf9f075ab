"""Optional bearer-token auth of the inference ports (gRPC and HTTP/REST alike).

One check for both protocols: the client sends ``authorization: Bearer <token>`` (gRPC
metadata or an HTTP header, what ``tritonclient``'s ``headers=`` argument sends), compared in
constant time. Liveness and readiness stay open so that a supervisor's probe (systemd,
Kubernetes) needs no secret; they say nothing but "up".
"""

from __future__ import annotations

import hmac

import grpc

# what answers without a token: liveness and readiness, nothing that reads a model or runs one
OPEN_GRPC_METHODS = frozenset(
    {"/inference.GRPCInferenceService/ServerLive", "/inference.GRPCInferenceService/ServerReady"}
)
OPEN_HTTP_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class BearerToken:
    """The token the inference ports demand; ``None`` leaves them open."""

    def __init__(self, token: str | None) -> None:
        self._expected = f"Bearer {token}".encode() if token else None

    @property
    def required(self) -> bool:
        return self._expected is not None

    def allows(self, authorization: str | None) -> bool:
        if self._expected is None:
            return True
        return authorization is not None and hmac.compare_digest(authorization.encode(), self._expected)


class TokenInterceptor(grpc.ServerInterceptor):
    """UNAUTHENTICATED for a call without the right token (before its request is decoded)."""

    def __init__(self, token: BearerToken) -> None:
        self.token = token

        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong bearer token")

        self._refusal = grpc.unary_unary_rpc_method_handler(refuse)

    def intercept_service(self, continuation, handler_call_details):
        if handler_call_details.method in OPEN_GRPC_METHODS:
            return continuation(handler_call_details)
        metadata = dict(handler_call_details.invocation_metadata or ())
        if self.token.allows(metadata.get("authorization")):
            return continuation(handler_call_details)
        return self._refusal
