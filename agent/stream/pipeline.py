"""One pipeline: sources -> muxer -> engine -> tracker -> events -> sinks (DeepStream's
``uridecodebin -> nvstreammux -> nvinfer -> nvtracker -> nvdsosd / nvmsgbroker``).

Threads: one per source (decode, pace, preprocess), ``model.inflight`` engine workers (each
takes a numbered batch from the muxer, runs it and decodes its outputs; several run at once on
an engine that admits it), and one publisher after them (tracking, events, drawing, sinks) that
takes the results back in batch order, so each source's frames are tracked and published in
order while the engines run the next batches. Sources are added and removed while it
runs; a source that fails is reported (its metrics say why, naming it) and the others go on.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from agent.errors import AgentError
from agent.stream.events import RateGate, build_event
from agent.stream.http import ViewServer
from agent.stream.infer import ActiveModel, Detections, Inference, ModelProvider, engine_inflight, prepare
from agent.stream.metrics import StageTimes, StreamMetrics
from agent.stream.muxer import Frame, FrameMuxer
from agent.stream.order import InOrder
from agent.stream.sinks import JsonlSink, MqttSink, Sink, VideoSink
from agent.stream.sources import Source
from agent.stream.spec import PipelineSpec, SourceSpec
from agent.stream.tracking import SourceTracker, make_tracker

log = logging.getLogger(__name__)


class PipelineError(AgentError):
    """A pipeline that cannot start or a change it refuses; the message names the pipeline."""


class Pipeline:
    def __init__(
        self,
        spec: PipelineSpec,
        *,
        slots=None,
        build: Callable | None = None,
        telemetry: Callable[[], object] = lambda: None,
    ) -> None:
        """``slots``: the agent's model slots (for ``model.path: active``); ``build``: builds the
        engine of a model path (``infer.build_fixed_engine`` bound to the agent's cache)."""
        self.spec = spec
        self.name = spec.name
        try:
            self.provider = ModelProvider(spec.model, slots, build)
        except AgentError as exc:
            raise PipelineError(f"pipeline {spec.name}: {exc}") from exc
        self.muxer = FrameMuxer(
            spec.batching.max_batch, spec.batching.max_wait_ms / 1000, spec.live_policy.drop.value
        )
        self.times = StageTimes()
        self.inference = Inference(spec.postprocess, self.times)
        self.metrics: dict[str, StreamMetrics] = {}
        self.sources: dict[str, Source] = {}
        self.source_specs: dict[str, SourceSpec] = {}
        self._trackers: dict[str, tuple[str, SourceTracker | None]] = {}
        self._gate = RateGate()
        self._telemetry = telemetry
        self.sinks: list[Sink] = []
        self.view: ViewServer | None = None
        self.model_version = ""
        self.model_error = ""
        self.batches = 0
        self.batched_frames = 0
        self._model: ActiveModel | None = None
        self.inflight = engine_inflight(spec.model)
        # results wait here for the batches taken before them: at most 4 beyond those in flight
        self._post: InOrder[tuple[ActiveModel | None, list[Frame], list[Detections] | None]] = InOrder(
            self.inflight + 4
        )
        self._take_lock = threading.Lock()  # a batch and its number are taken together
        self._taken_batches = 0
        self._stop = threading.Event()
        self._settled = 0  # frames taken from the muxer and published (or failed)
        self._settled_lock = threading.Lock()
        self._lock = threading.RLock()
        self._threads: list[threading.Thread] = []
        self.started = False

    # -- lifecycle
    def _make_sinks(self) -> None:
        s = self.spec.sinks
        several = len(self.spec.sources) > 1
        if s.mqtt.enabled:
            self.sinks.append(MqttSink(self.name, self._telemetry))
        if s.jsonl.path:
            self.sinks.append(JsonlSink(s.jsonl.path))
        rate_of = lambda sid: self.metrics[sid].nominal_fps if sid in self.metrics else 0.0  # noqa: E731
        if s.mp4.path:
            self.sinks.append(VideoSink(s.mp4.path, s.mp4.codec, s.mp4.fps, several, rate_of))
        if s.rtsp.url:
            self.sinks.append(VideoSink(s.rtsp.url, "h264", s.rtsp.fps, several, rate_of))
        if s.mjpeg.port >= 0:
            self.view = ViewServer(self.name, self.stats, s.mjpeg.host, s.mjpeg.port, s.mjpeg.quality,
                                   s.mjpeg.max_fps).start()  # fmt: skip

    def start(self) -> Pipeline:
        if self.started:
            return self
        try:
            self._model = self.provider.current()  # a model that cannot run is refused here
        except AgentError as exc:
            raise PipelineError(f"pipeline {self.name}: {exc}") from exc
        if self.spec.tracker.kind.value != "none":
            import trackers  # noqa: F401 - its first import takes seconds: not inside the first frame's time
        self._make_sinks()
        self.started = True
        loops = [(self._infer_loop, f"infer{i}") for i in range(self.inflight)] + [(self._post_loop, "post")]
        for target, name in loops:
            t = threading.Thread(target=target, name=f"pipeline-{self.name}-{name}", daemon=True)
            t.start()
            self._threads.append(t)
        for source in self.spec.sources:
            self.add_source(source, _initial=True)
        log.info("pipeline %s started: %d sources, model %s", self.name, len(self.spec.sources),
                 self._model.version if self._model else "(waiting for an active model)")  # fmt: skip
        return self

    def stop(self) -> None:
        for sid in list(self.sources):
            self.sources[sid].stop(timeout_s=2.0)
        self._stop.set()
        self.muxer.close()
        for t in self._threads:
            t.join(5.0)
        self._post.close()
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                log.warning("pipeline %s: closing a sink failed: %s", self.name, exc)
        if self.view is not None:
            self.view.stop()
        self.provider.close()
        self.started = False

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sources at run time
    def add_source(self, spec: SourceSpec, _initial: bool = False) -> None:
        with self._lock:
            if spec.id in self.sources:
                raise PipelineError(f"pipeline {self.name}: a source {spec.id!r} is already there")
            metrics = StreamMetrics(spec.id)
            self.metrics[spec.id] = metrics
            live = spec.is_live()
            capacity = self.spec.live_policy.queue if live else max(4, 2 * self.spec.batching.max_batch)
            self.muxer.add(spec.id, metrics, live, capacity)
            source = Source(spec, self.muxer, metrics, self._prepare, self.times)
            self.sources[spec.id] = source
            self.source_specs[spec.id] = spec
            if not _initial and spec not in self.spec.sources:
                self.spec.sources.append(spec)
        source.start()
        log.info("pipeline %s: source %s added (%s)", self.name, spec.id, spec.uri)

    def remove_source(self, source_id: str) -> None:
        with self._lock:
            source = self.sources.pop(source_id, None)
            if source is None:
                raise PipelineError(f"pipeline {self.name}: no source {source_id!r}")
            self.source_specs.pop(source_id, None)
            self.spec.sources = [s for s in self.spec.sources if s.id != source_id]
        source.stop()
        self.muxer.remove(source_id)
        self._gate.forget(source_id)
        self._trackers.pop(source_id, None)
        for sink in self.sinks:
            sink.remove_source(source_id)
        if self.view is not None:
            self.view.remove_source(source_id)
        self.metrics.pop(source_id, None)
        log.info("pipeline %s: source %s removed", self.name, source_id)

    # -- the work
    def _prepare(self, frame: Frame) -> None:
        model = self._model
        if model is not None:
            try:
                prepare(frame, model)
            except Exception as exc:  # the engine thread prepares it again and reports
                log.debug("source %s: preprocessing failed: %s", frame.source_id, exc)

    def _current_model(self) -> ActiveModel | None:
        try:
            model = self.provider.current()
        except AgentError as exc:
            if str(exc) != self.model_error:
                self.model_error = str(exc)
                log.error("pipeline %s: %s (frames wait for a model that can run)", self.name, exc)
            return None
        if model is not None:
            self.model_error = ""
            if model.version != self.model_version:
                self.model_version = model.version
            self._model = model
        return model

    def _next_batch(self) -> tuple[int, list[Frame]]:
        """A batch from the muxer and its number (the order the publisher restores)."""
        with self._take_lock:
            batch = self.muxer.next_batch(timeout_s=0.2)
            if not batch:
                return -1, batch
            seq = self._taken_batches
            self._taken_batches += 1
            return seq, batch

    def _infer_loop(self) -> None:
        """One engine worker: ``model.inflight`` of them run batches at once."""
        while not self._stop.is_set():
            seq, batch = self._next_batch()
            if not batch:
                continue
            model = self._current_model()
            while model is None and not self._stop.is_set():
                time.sleep(0.1)
                model = self._current_model()
            if model is None:
                self._post.put(seq, (None, batch, None))
                break
            try:
                dets = self.inference(model, batch)
            except Exception as exc:
                log.error("pipeline %s: inference on %s failed for a batch of %s: %s", self.name,
                          model.version, sorted({f.source_id for f in batch}), exc)  # fmt: skip
                for f in batch:
                    if f.source_id in self.metrics:
                        self.metrics[f.source_id].count("errors")
                self._post.put(seq, (model, batch, None))
                continue
            with self._settled_lock:
                self.batches += 1
                self.batched_frames += len(batch)
            self._post.put(seq, (model, batch, dets))

    def _tracker(self, source_id: str, task: str) -> SourceTracker | None:
        got = self._trackers.get(source_id)
        if got is None or got[0] != task:
            rate = self.metrics[source_id].nominal_fps if source_id in self.metrics else 0.0
            got = (task, make_tracker(self.spec.tracker, task, rate or 30.0))
            self._trackers[source_id] = got
        return got[1]

    def _post_loop(self) -> None:
        """The publisher: results in batch order, so each source's frames stay in order."""
        while True:
            got, item = self._post.get(timeout_s=0.2)
            if not got or item is None:
                if self._stop.is_set():
                    return
                continue
            model, batch, dets = item
            if model is None or dets is None:  # failed (counted) or stopped before it ran
                self._settle(len(batch))
                continue
            draw = self.view is not None or any(s.wants_image for s in self.sinks)
            try:
                for frame, det in zip(batch, dets, strict=True):
                    self._publish(model, frame, det, draw)
            except Exception:
                log.exception("pipeline %s: publishing failed", self.name)
            finally:
                self._settle(len(batch))

    def _settle(self, frames: int) -> None:
        with self._settled_lock:
            self._settled += frames

    def _publish(self, model: ActiveModel, frame: Frame, det: Detections, draw: bool) -> None:
        metrics = self.metrics.get(frame.source_id)
        if metrics is None:  # removed meanwhile
            return
        t0 = time.perf_counter()
        tracker = self._tracker(frame.source_id, model.task)
        if tracker is not None:
            det = tracker.update(det)
        t1 = time.perf_counter()
        spec = self.source_specs.get(frame.source_id)
        rate = (spec.event_rate if spec and spec.event_rate else None) or self.spec.events.rate
        publish, change = self._gate.check(frame.source_id, det, rate)
        annotated = None
        if publish:
            event = build_event(self.name, frame, det, model.version, change)
            if draw:
                caption = f"{frame.source_id} #{frame.index} {metrics.fps():.1f} FPS {model.version}"
                if self.view is not None:
                    self.view.offer(frame.source_id, frame, det, caption)
                if any(s.wants_image for s in self.sinks):
                    from agent.stream.annotate import annotate

                    annotated = annotate(frame.canvas(), det, caption)
            for sink in self.sinks:
                sink.write(event, annotated)
        elif draw and self.view is not None:
            self.view.offer(frame.source_id, frame, det, f"{frame.source_id} #{frame.index}")
        t2 = time.perf_counter()
        self.times.add("track", t1 - t0)
        self.times.add("sinks", t2 - t1)
        metrics.frame_done(frame.captured)

    # -- observation
    def idle(self) -> bool:
        """Every file source has ended (or failed) and every frame taken was published."""
        sources_done = all(not s.alive for s in self.sources.values())
        with self._settled_lock:
            settled = self._settled
        return sources_done and self.muxer.pending() == 0 and self.muxer.taken == settled

    def wait(self, timeout_s: float | None = None) -> bool:
        """Until ``idle()`` (files done), or ``timeout_s``; True when idle."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.idle():
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        time.sleep(0.05)
        return self.idle()

    def stats(self) -> dict:
        return {
            "pipeline": self.name,
            "model_version": self.model_version or None,
            "model_error": self.model_error,
            "follows_slot": self.provider.follows_slots,
            "batches": self.batches,
            "inflight": self.inflight,
            "inflight_peak": self.inference.peak_running,
            "mean_batch": round(self.batched_frames / self.batches, 2) if self.batches else 0.0,
            "stage_s": {k: round(v, 4) for k, v in self.times.snapshot().items()},
            "view": self.view.url if self.view is not None else None,
            "sources": [m.snapshot() for m in list(self.metrics.values())],
        }
