"""One port, one server: every gRPC server of edgeloop binds through ``bind_grpc``.

grpcio sets SO_REUSEPORT on its listening sockets by default, so a second controller or agent
started on a taken port binds without an error and the kernel splits connections between the
two processes (a client's requests reach the newcomer's model). ``NO_REUSEPORT`` turns that off;
``bind_grpc`` turns a failed bind into ``PortInUse`` naming the address, which the command line
prints before it exits non-zero.
"""

from __future__ import annotations

import grpc

NO_REUSEPORT = ("grpc.so_reuseport", 0)


class PortInUse(OSError):
    """The address is taken (by another process or another server of this one)."""


def bind_grpc(
    server: grpc.Server | grpc.aio.Server,
    host: str,
    port: int,
    credentials: grpc.ServerCredentials | None = None,
) -> int:
    """Listen on ``host:port`` (0 = a free port), over TLS with ``credentials``; returns the port
    or raises ``PortInUse``. The server must have been made with ``NO_REUSEPORT`` among its options."""
    address = f"{host}:{port}"
    try:
        if credentials is None:
            bound = server.add_insecure_port(address)
        else:
            bound = server.add_secure_port(address, credentials)
    except RuntimeError as exc:  # grpcio >= 1.5x raises instead of returning 0
        raise PortInUse(f"cannot listen on {address}: the port is in use or not available ({exc})") from exc
    if bound == 0:
        raise PortInUse(f"cannot listen on {address}: the port is in use or not available")
    return bound
