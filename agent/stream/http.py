"""The annotated view in a browser: MJPEG over HTTP (``multipart/x-mixed-replace``, which every
browser shows in an ``<img>``), with a page listing the sources and the pipeline's numbers.

- ``/``                    a page with every source's live view and its FPS / latency / drops;
- ``/stream/<source>.mjpg`` the annotated stream of one source;
- ``/snapshot/<source>.jpg`` its latest annotated frame;
- ``/stats.json``           the pipeline's metrics (what telemetry publishes).
Frames are drawn and encoded only for viewers (at most ``max_fps`` each), so an unwatched view
costs the pipeline one reference per frame.
"""

from __future__ import annotations

import html
import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from agent.stream.annotate import annotate, jpeg
from agent.stream.infer import Detections
from agent.stream.muxer import Frame

log = logging.getLogger(__name__)
BOUNDARY = "edgeloopframe"


class ViewServer:
    def __init__(self, name: str, stats: Callable[[], dict], host: str = "127.0.0.1", port: int = 0,
                 quality: int = 80, max_fps: float = 15.0) -> None:  # fmt: skip
        self.name = name
        self.stats = stats
        self.quality = quality
        self.max_fps = max_fps
        self._latest: dict[str, tuple[int, Frame, Detections, str]] = {}
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._server = ThreadingHTTPServer((host, port), self._handler())
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def url(self) -> str:
        host = self._server.server_address[0]
        name = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{'127.0.0.1' if name in ('0.0.0.0', '') else name}:{self.port}/"

    def start(self) -> ViewServer:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name=f"view-{self.name}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def offer(self, source_id: str, frame: Frame, det: Detections, caption: str) -> None:
        """The latest frame of a source; converted to RGB and drawn only if a viewer asks."""
        with self._cond:
            seq = self._latest.get(source_id, (0,))[0] + 1
            self._latest[source_id] = (seq, frame, det, caption)
            self._cond.notify_all()

    def remove_source(self, source_id: str) -> None:
        with self._cond:
            self._latest.pop(source_id, None)
            self._cond.notify_all()

    def _render(self, source_id: str) -> tuple[int, bytes] | None:
        with self._cond:
            item = self._latest.get(source_id)
        if item is None:
            return None
        seq, frame, det, caption = item
        return seq, jpeg(annotate(frame.canvas(), det, caption), self.quality)

    def _wait_newer(self, source_id: str, seq: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not self._stop.is_set():
                item = self._latest.get(source_id)
                if item is not None and item[0] != seq:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return False

    def _page(self) -> bytes:
        stats = self.stats()
        cards = []
        for s in stats.get("sources", []):
            sid = html.escape(s["source_id"])
            cards.append(
                f'<figure><img src="/stream/{sid}.mjpg" alt="{sid}"><figcaption><b>{sid}</b> '
                f"{s['fps']:.1f} FPS, latency p50 {s['latency_ms']['p50']:.0f} ms / p99 "
                f"{s['latency_ms']['p99']:.0f} ms, dropped {s['dropped']}, reconnects {s['reconnects']}, "
                f"{html.escape(s['state'])}</figcaption></figure>"
            )
        body = (
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(self.name)} - edgeloop"
            "</title><style>body{font-family:sans-serif;background:#111;color:#eee}figure{display:inline-block;"
            "margin:8px}img{max-width:640px;border:1px solid #444}</style></head><body>"
            f"<h1>{html.escape(self.name)}</h1><p>model {html.escape(str(stats.get('model_version')))}</p>"
            + "".join(cards)
            + "</body></html>"
        )
        return body.encode()

    def _handler(self):
        view = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, fmt, *args):  # quiet: the access log is not telemetry
                log.debug("view: " + fmt, *args)

            def _send(self, code: int, ctype: str, body: bytes) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path in ("/", "/index.html"):
                    return self._send(200, "text/html; charset=utf-8", view._page())
                if path == "/stats.json":
                    return self._send(200, "application/json", json.dumps(view.stats()).encode())
                if path.startswith("/snapshot/") and path.endswith(".jpg"):
                    got = view._render(path[len("/snapshot/") : -4])
                    if got is None:
                        return self._send(404, "text/plain", b"no such source, or no frame yet\n")
                    return self._send(200, "image/jpeg", got[1])
                if path.startswith("/stream/") and path.endswith(".mjpg"):
                    return self._stream(path[len("/stream/") : -5])
                return self._send(404, "text/plain", b"not found\n")

            def _stream(self, source_id: str) -> None:
                self.send_response(200)
                self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
                self.send_header("Cache-Control", "no-store")
                self.end_headers()
                seq = -1
                period = 1.0 / view.max_fps if view.max_fps else 0.0
                try:
                    while not view._stop.is_set():
                        started = time.monotonic()
                        if not view._wait_newer(source_id, seq, 5.0):
                            if source_id not in view._latest and seq != -1:
                                return  # the source left
                            continue
                        got = view._render(source_id)
                        if got is None:
                            continue
                        seq, data = got
                        self.wfile.write(
                            f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n".encode()
                            + data
                            + b"\r\n"
                        )
                        self.wfile.flush()
                        rest = period - (time.monotonic() - started)
                        if rest > 0:
                            time.sleep(rest)
                except (BrokenPipeError, ConnectionResetError):
                    return

        return Handler
