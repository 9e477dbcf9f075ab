"""A TCP proxy the test controls, between an agent and the controller: ``cut()`` drops every open
connection and refuses new ones (a link that went down), ``restore()`` lets traffic through
again, and ``rate_bytes_s`` slows the controller-to-agent direction so a cut lands in the middle
of a download. The network-namespace variant needs root and iproute2 on the CI host; this needs
neither, and cuts the same gRPC connections."""

from __future__ import annotations

import socket
import threading
import time


class TcpProxy:
    def __init__(self, target: tuple[str, int], *, rate_bytes_s: float = 0.0) -> None:
        self.target = target
        self.rate_bytes_s = rate_bytes_s
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self.cuts = 0
        self.down_bytes = 0  # controller -> agent, what has gone through
        threading.Thread(target=self._accept, name="proxy-accept", daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self._up.is_set():
                client.close()  # the link is down: the connection goes nowhere
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._open += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, 0.0), daemon=True).start()
            threading.Thread(
                target=self._pump, args=(upstream, client, self.rate_bytes_s), daemon=True
            ).start()

    def _pump(self, src: socket.socket, dst: socket.socket, rate: float) -> None:
        try:
            while data := src.recv(16 << 10):
                if not self._up.is_set():
                    break
                dst.sendall(data)
                if rate:
                    self.down_bytes += len(data)
                    time.sleep(len(data) / rate)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut(self) -> None:
        """The link goes down: every open connection is dropped, new ones are refused."""
        self._up.clear()
        self.cuts += 1
        with self._lock:
            conns, self._open = self._open, []
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self.listener.close()
