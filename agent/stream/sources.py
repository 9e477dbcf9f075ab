"""Video sources, one thread each, decoding through PyAV (FFmpeg in its wheel).

Files (H.264/H.265 in mp4/mkv, anything FFmpeg reads), RTSP, HTTP MJPEG
(``multipart/x-mixed-replace``), V4L2 cameras and image folders. Frames keep their source
timestamp (``pts`` in the stream's time base, as seconds) beside the wall clock of their
capture. A live source that fails or ends is reopened with a doubling backoff, each reconnect
counted; a file that fails ends with its error (the frames before it were processed). Every
error names the source; one source failing never stops another.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from agent.preprocess import IMAGE_SUFFIXES
from agent.stream.metrics import StageTimes, StreamMetrics
from agent.stream.muxer import Frame, FrameMuxer
from agent.stream.spec import SourceKind, SourceSpec

log = logging.getLogger(__name__)

OPEN_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 5.0


class SourceError(RuntimeError):
    """A source that cannot be opened or decoded; the message starts with the source id."""


def _open_av(spec: SourceSpec):
    import av

    kind = spec.resolved_kind()
    uri = spec.uri
    options: dict[str, str] = {}
    fmt = None
    if kind is SourceKind.RTSP:
        options = {"rtsp_transport": "tcp"}
    elif kind is SourceKind.HTTP:
        fmt = "mpjpeg"
    elif kind is SourceKind.V4L2:
        fmt = "v4l2"
        uri = uri.removeprefix("v4l2://")
        if spec.fps:
            options["framerate"] = f"{spec.fps:g}"
    elif not Path(uri).is_file():
        raise SourceError(f"source {spec.id}: file not found: {uri}")
    container = av.open(uri, format=fmt, options=options, timeout=(OPEN_TIMEOUT_S, READ_TIMEOUT_S))
    if not container.streams.video:
        container.close()
        raise SourceError(f"source {spec.id}: {uri} has no video stream")
    return container


def _av_frames(spec: SourceSpec) -> Generator[tuple[Any, float | None, float], None, None]:
    """(``av.VideoFrame`` as decoded, pts seconds, nominal fps) of one opening of the source. The
    frame stays in the decoder's pixel format: preprocessing scales it to the model's size in one
    swscale pass, and it becomes full-size RGB only if something draws on it."""
    container = _open_av(spec)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame/slice threads inside FFmpeg
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        for frame in container.decode(stream):
            pts = float(frame.pts * frame.time_base) if frame.pts is not None and frame.time_base else None
            yield frame, pts, rate
    finally:
        container.close()


def _folder_frames(spec: SourceSpec) -> Generator[tuple[np.ndarray, float | None, float], None, None]:
    root = Path(spec.uri)
    if not root.is_dir():
        raise SourceError(f"source {spec.id}: image folder not found: {root}")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SourceError(f"source {spec.id}: no images in {root}")
    for i, path in enumerate(files):
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            log.warning("source %s: skipping undecodable image %s (%s)", spec.id, path.name, exc)
            continue
        yield array, (i / spec.fps if spec.fps else None), spec.fps or 0.0


class Source:
    """One source's thread: open, decode, (pace,) hand frames to the muxer; reconnect live ones."""

    def __init__(
        self,
        spec: SourceSpec,
        muxer: FrameMuxer,
        metrics: StreamMetrics,
        prepare: Callable[[Frame], None] | None = None,
        times: StageTimes | None = None,
    ) -> None:
        self.spec = spec
        self.times = times
        self.muxer = muxer
        self.metrics = metrics
        self.prepare = prepare
        self.live = spec.is_live()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"source-{spec.id}", daemon=True)
        self._index = 0
        self._lost = False  # a live source lost its stream and has not given a frame since

    def start(self) -> Source:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout_s: float | None = None) -> None:
        self._thread.join(timeout_s)

    def _frames(self) -> Generator[tuple[Any, float | None, float], None, None]:
        if self.spec.resolved_kind() is SourceKind.IMAGES:
            return _folder_frames(self.spec)
        return _av_frames(self.spec)

    def _emit(self, decoded: Any, pts: float | None) -> bool:
        frame = Frame(self.spec.id, self._index, pts, time.time(), decoded)
        w, h = frame.width, frame.height
        m = self.metrics
        if m.width and (w, h) != (m.width, m.height):
            m.count("resolution_changes")
            log.warning("source %s: resolution changed from %dx%d to %dx%d; processing goes on",
                        self.spec.id, m.width, m.height, w, h)  # fmt: skip
        m.width, m.height = w, h
        self._index += 1
        m.count("decoded")
        if self.prepare is not None and (not self.live or self.muxer.has_room(self.spec.id)):
            t0 = time.perf_counter()  # a live source behind the engine leaves it to the engine thread
            self.prepare(frame)
            if self.times is not None:
                self.times.add("preprocess", time.perf_counter() - t0)
        return self.muxer.put(frame, self._stop)

    def _play_once(self) -> int:
        """One opening of the source; returns the frames emitted. Raises on an error."""
        emitted = 0
        start_wall: float | None = None
        start_pts = 0.0
        frames = self._frames()
        try:
            while True:
                t0 = time.perf_counter()
                item = next(frames, None)
                if self.times is not None:
                    self.times.add("decode", time.perf_counter() - t0)
                if item is None:
                    break
                decoded, pts, rate = item
                if self._stop.is_set():
                    break
                if self.spec.pace:
                    t = pts if pts is not None else emitted / (rate or 25.0)
                    if start_wall is None:
                        start_wall, start_pts = time.monotonic(), t
                    delay = start_wall + (t - start_pts) - time.monotonic()
                    if delay > 0 and self._stop.wait(delay):
                        break
                if emitted == 0:
                    self.metrics.nominal_fps = rate
                    self.metrics.set_state("running")
                    if self._lost:  # counted when frames flow again, not when the stream later ends
                        self._lost = False
                        self.metrics.count("reconnects")
                        log.info("source %s: reconnected", self.spec.id)
                if not self._emit(decoded, pts):
                    self._stop.set()
                    break
                emitted += 1
        finally:
            frames.close()  # the container now, not when collected
        return emitted

    def _run(self) -> None:
        spec = self.spec
        backoff = spec.reconnect.initial_backoff_s
        attempts = 0
        while not self._stop.is_set():
            try:
                emitted = self._play_once()
                if emitted:
                    attempts, backoff = 0, spec.reconnect.initial_backoff_s
                if self._stop.is_set():
                    break
                if spec.loop and emitted and spec.resolved_kind() in (SourceKind.FILE, SourceKind.IMAGES):
                    continue  # a file played again (a file played as a camera too: live + pace + loop)
                if not self.live:
                    self.metrics.set_state("ended")
                    return
                reason = f"source {spec.id}: stream ended"
            except Exception as exc:  # av.FFmpegError, OSError, SourceError: all name the source
                reason = str(exc) if str(exc).startswith(f"source {spec.id}") else f"source {spec.id}: {exc}"
                if not self.live:
                    log.error("%s", reason)
                    self.metrics.set_state("failed", reason)
                    return
            # a live source was lost (or never opened): back off, try again
            self._lost = True
            attempts += 1
            if spec.reconnect.max_attempts and attempts > spec.reconnect.max_attempts:
                self.metrics.set_state("failed", f"{reason} (gave up after {attempts - 1} attempts)")
                return
            self.metrics.set_state("reconnecting", reason)
            log.warning("%s; reconnecting in %.1fs", reason, backoff)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, spec.reconnect.max_backoff_s)
        if self.metrics.state not in ("failed", "ended"):
            self.metrics.set_state("removed")
