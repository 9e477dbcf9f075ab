"""The benchmark's stream scenario: how many live streams of a reference clip this device keeps
up with at a frame rate, through the real pipeline (decode, batching, engine, tracker, events).

Each step plays N copies of the clip as live cameras (``live`` + ``pace`` + ``loop``) for
``duration_s`` and reads the per-stream processed FPS, the drops and the capture-to-event
latency. A step *meets* the rate when every stream sustains at least ``keep_up`` of it (drops
are how a live source keeps up when it cannot). The capacity is the largest N that meets it.
This is the FPS figure DeepStream users quote for a model on a device.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.stream.pipeline import Pipeline
from agent.stream.spec import load_pipeline_spec


@dataclass
class StreamStep:
    streams: int
    target_fps: float
    min_stream_fps: float  # the slowest stream's processed FPS
    mean_stream_fps: float
    dropped: int
    decoded: int
    latency_p50_ms: float
    latency_p99_ms: float
    meets: bool


def run_step(clip: str | Path, streams: int, fps: float, build: Callable | None, model_overrides: Sequence[str] = (),
             *, slots=None, duration_s: float = 10.0, max_batch: int = 8, keep_up: float = 0.95) -> StreamStep:  # fmt: skip
    """N live copies of ``clip`` paced at its own rate (``fps`` is the rate asked of it)."""
    sources = [
        {"id": f"s{i}", "uri": str(clip), "live": True, "pace": True, "loop": True} for i in range(streams)
    ]
    spec = load_pipeline_spec({"name": f"capacity{streams}", "sources": sources},
                              [f"batching.max_batch={max_batch}", "batching.max_wait_ms=5", *model_overrides])  # fmt: skip
    pipeline = Pipeline(spec, slots=slots, build=build).start()
    try:
        time.sleep(min(2.0, duration_s / 4))  # warm-up: the first batches, the tracker's first frames
        before = {s["source_id"]: s["processed"] for s in pipeline.stats()["sources"]}
        start = time.monotonic()
        time.sleep(duration_s)
        elapsed = time.monotonic() - start
        stats = pipeline.stats()["sources"]
    finally:
        pipeline.stop()
    rates = [(s["processed"] - before.get(s["source_id"], 0)) / elapsed for s in stats]
    return StreamStep(
        streams=streams,
        target_fps=fps,
        min_stream_fps=round(min(rates), 2),
        mean_stream_fps=round(sum(rates) / len(rates), 2),
        dropped=sum(s["dropped"] for s in stats),
        decoded=sum(s["decoded"] for s in stats),
        latency_p50_ms=max(s["latency_ms"]["p50"] for s in stats),
        latency_p99_ms=max(s["latency_ms"]["p99"] for s in stats),
        meets=min(rates) >= keep_up * fps,
    )


def clip_fps(clip: str | Path) -> float:
    """The reference clip's own frame rate (the rate its live copies are played at)."""
    import av

    clip = Path(clip)
    if not clip.is_file():
        raise FileNotFoundError(f"stream clip not found: {clip}")
    try:
        with av.open(str(clip)) as container:
            if not container.streams.video:
                raise ValueError(f"stream clip {clip.name} has no video stream")
            return float(container.streams.video[0].average_rate or 25)
    except av.FFmpegError as exc:
        raise ValueError(f"stream clip {clip.name} cannot be read: {exc}") from exc


def stream_capacity(clip: str | Path, fps: float, build: Callable | None, model_overrides: Sequence[str] = (),
                    *, steps: Sequence[int] = (1, 2, 4, 8), slots=None, duration_s: float = 10.0,
                    max_batch: int = 8) -> dict:  # fmt: skip
    """Steps in order until one misses; ``capacity`` = the most streams that met ``fps``."""
    results: list[StreamStep] = []
    for n in steps:
        step = run_step(clip, n, fps, build, model_overrides, slots=slots, duration_s=duration_s,
                        max_batch=max_batch)  # fmt: skip
        results.append(step)
        if not step.meets:
            break
    capacity = max((s.streams for s in results if s.meets), default=0)
    return {"stream_fps": fps, "capacity": capacity, "steps": [asdict(s) for s in results]}
