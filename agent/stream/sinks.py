"""Where a pipeline's results go (DeepStream's ``nvmsgbroker``, file and RTSP sinks).

- ``MqttSink``: each event through the agent's telemetry client (QoS 1, queued by paho while the
  broker is away), on ``{prefix}/devices/{device}/streams/{pipeline}/events``;
- ``JsonlSink``: one event a line in a file;
- ``VideoSink``: the annotated frames encoded with PyAV, to an mp4 file per source or pushed to
  an RTSP server (``rtsp://...``, H.264; a recorder or MediaMTX takes it from there);
- the annotated MJPEG view over HTTP is ``agent.stream.http.ViewServer``.
A sink that fails logs it, counts it and stops writing; the pipeline goes on.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)


class Sink:
    """``write`` gets each published event; ``wants_image`` sinks get the annotated frame too."""

    wants_image = False
    failures = 0

    def write(self, event: dict, annotated: Image.Image | None = None) -> None:
        raise NotImplementedError

    def remove_source(self, source_id: str) -> None:  # noqa: B027 - optional hook
        """The source left the pipeline: close what was open for it."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Flush and release."""


class JsonlSink(Sink):
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, event: dict, annotated: Image.Image | None = None) -> None:
        with self._lock:
            self._file.write(json.dumps(event, separators=(",", ":")) + "\n")

    def close(self) -> None:
        with self._lock:
            self._file.close()


class MqttSink(Sink):
    """Through the telemetry client of the moment (``telemetry()``: it may be attached later or
    replaced); events while there is none are counted in ``unpublished``."""

    def __init__(self, pipeline: str, telemetry: Callable[[], Any]) -> None:
        self.pipeline = pipeline
        self.telemetry = telemetry
        self.published = 0
        self.unpublished = 0

    def write(self, event: dict, annotated: Image.Image | None = None) -> None:
        client = self.telemetry()
        if client is None or not client.stream_event(self.pipeline, event):
            self.unpublished += 1
            return
        self.published += 1


class VideoSink(Sink):
    """Annotated frames encoded per source: ``target`` is a file path (``{source}`` in it, or
    ``NAME.<source>.mp4`` beside it when the pipeline has several sources) or an ``rtsp://`` URL
    (``/<source>`` appended when several)."""

    wants_image = True

    def __init__(self, target: str, codec: str = "h264", fps: float = 0.0, several: bool = False,
                 rate_of: Callable[[str], float] = lambda _sid: 0.0) -> None:  # fmt: skip
        self.target = target
        self.rate_of = rate_of
        self.codec = codec
        self.fps = fps
        self.several = several
        self._out: dict[str, tuple] = {}
        self._failed: set[str] = set()
        self._lock = threading.Lock()

    def _target_for(self, source_id: str) -> str:
        if "{source}" in self.target:
            return self.target.replace("{source}", source_id)
        if self.target.startswith("rtsp://"):
            return f"{self.target.rstrip('/')}/{source_id}" if self.several else self.target
        if not self.several:
            return self.target
        p = Path(self.target)
        return str(p.with_name(f"{p.stem}.{source_id}{p.suffix or '.mp4'}"))

    def _open(self, source_id: str, image: Image.Image, fps: float):
        import av

        target = self._target_for(source_id)
        if target.startswith("rtsp://"):
            container = av.open(target, "w", format="rtsp", options={"rtsp_transport": "tcp"})
        else:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            container = av.open(target, "w")
        rate = Fraction(self.fps or fps or 25).limit_denominator(1000)
        codec = "libx264" if self.codec in ("h264", "libx264") else self.codec
        stream: Any = container.add_stream(codec, rate=rate)  # a VideoStream for a video codec
        stream.width, stream.height = image.width - image.width % 2, image.height - image.height % 2
        stream.pix_fmt = "yuv420p"
        if self.codec in ("h264", "libx264"):
            stream.options = {"preset": "ultrafast", "tune": "zerolatency"}
        return container, stream, [0]

    def write(self, event: dict, annotated: Image.Image | None = None) -> None:
        import av

        sid = event["source_id"]
        if annotated is None or sid in self._failed:
            return
        with self._lock:
            try:
                if sid not in self._out:
                    self._out[sid] = self._open(sid, annotated, self.rate_of(sid))
                container, stream, count = self._out[sid]
                if annotated.size != (stream.width, stream.height):
                    annotated = annotated.resize((stream.width, stream.height))
                pixels = np.asarray(annotated)  # RGB, or RGBX from Frame.canvas() (the X is ignored)
                frame = av.VideoFrame.from_ndarray(pixels, format="rgba" if pixels.shape[2] == 4 else "rgb24")
                frame.pts, frame.time_base = count[0], Fraction(1) / stream.codec_context.framerate
                count[0] += 1
                for packet in stream.encode(frame):
                    container.mux(packet)
            except Exception as exc:  # a sink failing must not stop the pipeline
                self.failures += 1
                self._failed.add(sid)
                log.error("video sink %s for source %s failed: %s", self._target_for(sid), sid, exc)

    def _finish(self, sid: str) -> None:
        container, stream, _ = self._out.pop(sid)
        try:
            for packet in stream.encode():
                container.mux(packet)
        except Exception as exc:
            log.warning("video sink for %s: flush failed: %s", sid, exc)
        container.close()

    def remove_source(self, source_id: str) -> None:
        with self._lock:
            if source_id in self._out:
                self._finish(source_id)

    def close(self) -> None:
        with self._lock:
            for sid in list(self._out):
                self._finish(sid)
