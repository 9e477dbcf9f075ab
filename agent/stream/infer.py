"""Batches of frames through the engine: preprocessing as the manifest says, postprocessing per
its ``detection`` field (boxes, labels, scores in the frame's pixels) or, for classification, a
label per frame.

The engine is the slots' (``model.path: active``: each batch asks the slots which model is
active, so a switch or rollback takes effect at the next batch without touching the sources) or
one built for this pipeline through the same engine cache (``build_engine``). Preprocessing runs
in the source threads (``prepare``, in parallel over sources) for the model of the moment; a
frame prepared for another model is prepared again here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.backends.base import Engine
from agent.errors import AgentError, ArtifactError
from agent.eval_detection import decode_detections, to_image_frame
from agent.preprocess import Preprocessor, feeds_for
from agent.stream.metrics import StageTimes
from agent.stream.muxer import Frame
from agent.stream.spec import ModelSpec, Postprocess
from protos import artifact_pb2

log = logging.getLogger(__name__)


@dataclass
class Detections:
    """What the model saw in one frame, in the frame's pixels."""

    boxes: np.ndarray  # [k, 4] xyxy
    scores: np.ndarray  # [k]
    class_ids: np.ndarray  # [k] int
    labels: list[str]
    track_ids: np.ndarray | None = None  # [k] after tracking; -1 = not confirmed yet
    frame_label: str | None = None  # classification: the label of the frame
    frame_score: float | None = None


@dataclass
class ActiveModel:
    """The engine a batch runs on, with what decoding it needs."""

    version: str
    engine: Engine
    manifest: artifact_pb2.Manifest
    preprocess: Preprocessor
    task: str  # detection | classification
    labels: list[str] = field(default_factory=list)


def model_task(manifest: artifact_pb2.Manifest) -> str:
    """``detection`` when the manifest says how to decode boxes; ``classification`` when it is
    one; refused otherwise (the caller names the pipeline)."""
    if manifest.HasField("detection") and manifest.detection.boxes_output:
        return "detection"
    if manifest.task == "detection":
        raise ArtifactError(
            f"model {manifest.version or manifest.name}: task is detection but the manifest has no "
            "detection field (boxes_output, logits_output, box_format): cannot decode its outputs"
        )
    if manifest.task in ("", "classification"):
        return "classification"
    raise ArtifactError(f"model {manifest.version}: task {manifest.task!r} cannot run in a video pipeline")


def _active_model(version: str, engine: Engine, manifest: artifact_pb2.Manifest) -> ActiveModel:
    task = model_task(manifest)
    return ActiveModel(version, engine, manifest, Preprocessor.from_manifest(manifest), task,
                       list(manifest.labels))  # fmt: skip


class ModelProvider:
    """The model for the next batch: the slots' active one, or a fixed one built once."""

    def __init__(
        self, spec: ModelSpec, slots=None, build: Callable[[ModelSpec], tuple] | None = None
    ) -> None:
        self.spec = spec
        self.slots = slots
        self._fixed: ActiveModel | None = None
        self._lock = threading.Lock()
        self._cached: ActiveModel | None = None
        if spec.path != "active":
            if build is None:
                raise AgentError("a pipeline with a model path needs an engine builder")
            engine, manifest = build(spec)
            self._fixed = _active_model(manifest.version, engine, manifest)
        elif slots is None:
            raise AgentError("model.path is 'active' but this agent has no model slots")

    @property
    def follows_slots(self) -> bool:
        return self._fixed is None

    def current(self) -> ActiveModel | None:
        """None while the slots hold no active model (the pipeline waits)."""
        if self._fixed is not None:
            return self._fixed
        loaded = self.slots.active
        if loaded is None:
            return None
        with self._lock:
            cached = self._cached
            if cached is None or cached.version != loaded.version or cached.engine is not loaded.engine:
                cached = _active_model(loaded.version, loaded.engine, loaded.manifest)
                if self._cached is not None:
                    log.info(
                        "pipeline model follows the slot: %s -> %s", self._cached.version, cached.version
                    )
                self._cached = cached
            return cached

    def close(self) -> None:
        if self._fixed is not None:
            self._fixed.engine.close()


# the manifest's interpolation as FFmpeg's swscale names it
_SWSCALE = {"bilinear": "BILINEAR", "nearest": "POINT", "bicubic": "BICUBIC", "": "BILINEAR"}


def model_input(decoded: Any, pre: Preprocessor) -> np.ndarray:
    """The input tensor of one frame. A decoded ``av.VideoFrame`` is scaled and converted to RGB
    by swscale in one pass, from its own pixel format straight to the size ``pre.geometry``
    gives (no full-size RGB image, no PIL), then cut or padded and normalised as the manifest
    says. An RGB array (image folders) takes the reference path (PIL), as calibration and
    evaluation do. The two resamplers differ by a grey level or two on average
    (tests/stream/test_stream_preprocess.py holds the bound)."""
    if isinstance(decoded, np.ndarray):
        return pre(Image.fromarray(decoded))
    nw, nh, _, _ = pre.geometry(decoded.width, decoded.height)
    # one thread: swscale's default (auto) starts and stops a thread pool for every frame
    resized = decoded.to_ndarray(
        width=nw, height=nh, format="rgb24", interpolation=_SWSCALE[pre.interpolation], threads=1
    )
    return pre.normalize(pre.place(resized))


def prepare(frame: Frame, model: ActiveModel) -> None:
    """Preprocess ``frame`` for ``model`` (in the source's thread)."""
    frame.tensor = model_input(frame.decoded, model.preprocess)
    frame.tensor_key = model.preprocess


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


class Inference:
    """Runs one batch: stack, engine (chunked or padded to the engine's batch), decode."""

    def __init__(self, post: Postprocess, times: StageTimes) -> None:
        self.post = post
        self.times = times
        self._running = 0  # batches inside the engine's run now (incl. waiting for its admission)
        self.peak_running = 0  # the most at once so far: > 1 shows ``model.inflight`` at work
        self._count_lock = threading.Lock()

    def _enter(self, delta: int) -> None:
        with self._count_lock:
            self._running += delta
            self.peak_running = max(self.peak_running, self._running)

    def _run_engine(self, model: ActiveModel, tensors: np.ndarray) -> dict[str, np.ndarray]:
        engine = model.engine
        fixed = engine.fixed_batch
        limit = fixed or engine.max_batch or len(tensors)
        outputs: list[dict[str, np.ndarray]] = []
        for start in range(0, len(tensors), limit):
            chunk = tensors[start : start + limit]
            n = len(chunk)
            if fixed and n < fixed:
                chunk = np.concatenate([chunk, np.zeros((fixed - n, *chunk.shape[1:]), chunk.dtype)])
            feeds = feeds_for(model.manifest, chunk)
            self._enter(1)
            try:
                out = engine.run(feeds)
            finally:
                self._enter(-1)
            outputs.append({k: v[:n] for k, v in out.items()})
        return {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}

    def __call__(self, model: ActiveModel, frames: list[Frame]) -> list[Detections]:
        t0 = time.perf_counter()
        tensors: list[np.ndarray] = []
        for f in frames:
            if f.tensor is None or f.tensor_key != model.preprocess:
                prepare(f, model)
            assert f.tensor is not None  # noqa: S101 - prepare() sets it
            tensors.append(f.tensor)
        batch = np.stack(tensors)
        t1 = time.perf_counter()
        outputs = self._run_engine(model, batch)
        t2 = time.perf_counter()
        results = self._decode(model, frames, outputs)
        t3 = time.perf_counter()
        self.times.add("preprocess", t1 - t0)
        self.times.add("engine", t2 - t1)
        self.times.add("postprocess", t3 - t2)
        return results

    def _decode(self, model: ActiveModel, frames: list[Frame], outputs: dict) -> list[Detections]:
        labels = model.labels
        if model.task == "classification":
            logits = (
                outputs[model.manifest.outputs[0].name]
                if model.manifest.outputs
                else next(iter(outputs.values()))
            )
            probs = _softmax(np.asarray(logits, dtype=np.float64).reshape(len(frames), -1))
            out = []
            for p in probs:
                k = int(p.argmax())
                out.append(Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64), [],
                                      frame_label=labels[k] if k < len(labels) else str(k),
                                      frame_score=float(p[k])))  # fmt: skip
            return out
        det = model.manifest.detection
        try:
            logits, boxes = outputs[det.logits_output], outputs[det.boxes_output]
        except KeyError as exc:
            raise ArtifactError(
                f"model {model.version}: manifest names output {exc} the engine lacks"
            ) from exc
        decoded = decode_detections(logits, boxes, det, self.post.max_detections)
        out = []
        for f, (scores, cls, xyxy) in zip(frames, decoded, strict=True):
            keep = scores >= self.post.score_threshold
            h, w = f.height, f.width
            b = (
                to_image_frame(xyxy[keep], model.preprocess, det.normalized, w, h)
                if keep.any()
                else np.zeros((0, 4))
            )
            c = cls[keep]
            out.append(Detections(b.astype(np.float32), scores[keep].astype(np.float32), c,
                                  [labels[i] if i < len(labels) else str(int(i)) for i in c]))  # fmt: skip
        return out


def engine_inflight(spec: ModelSpec) -> int:
    """Engine calls a pipeline keeps in flight: ``model.inflight``, else two where there are two
    cores or more. Two is enough to keep every core busy when each call has ``cores / 2``
    threads, and it overlaps one batch's stacking and decoding with the other's engine time;
    more only holds more frames (and latency) between the sources and the sinks."""
    from agent.probe import usable_cores

    return spec.inflight or min(2, usable_cores())


def engine_threads(spec: ModelSpec, agent_threads: int | None = None) -> int:
    """Intra-op threads of each call of a pipeline's own engine: ``model.threads``, else the
    agent's ``--threads``, else the cores shared out over the calls in flight (at least one):
    on 2 cores, two calls of one thread. The engine then admits that many runs at once
    (``OnnxRuntimeEngine.concurrency``). One call spread over every core was measured at twice
    the CPU per frame on 2 cores: its parallel sections wait for whichever core a decoder holds
    (docs/stream.md)."""
    from agent.probe import usable_cores

    return spec.threads or agent_threads or max(1, usable_cores() // engine_inflight(spec))


def build_fixed_engine(
    spec: ModelSpec, profile, cache, threads: int | None = None
) -> tuple[Engine, artifact_pb2.Manifest]:
    """The engine for ``model.path`` (not the slots'), through the agent's engine cache;
    ``threads``: the agent's ``--threads`` (``engine_threads`` decides)."""
    from agent.engines import build_engine
    from agent.model_spec import resolve_model

    threads = engine_threads(spec, threads or profile.cpu_threads_limit or None)
    resolved = resolve_model(Path(spec.path), spec.manifest)
    built = build_engine(resolved, profile=profile, cache=cache, backend=spec.backend, precision=spec.precision,
                         device=spec.device, calib_dir=spec.calib, threads=threads)  # fmt: skip
    return built.engine, resolved.manifest
