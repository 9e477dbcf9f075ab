"""Pareto fronts and the choice per device class, from measured numbers only.

A ``Measurement`` is what one device of a class reported for one candidate (model version x
backend x precision). The chosen candidate is the most accurate one that meets the class goal
(offline FPS, latency, memory, and the stream capacity that the benchmark's stream scenario
measured); when none does, the closest one is chosen and flagged, with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.loop.goals import ClassGoal


@dataclass(frozen=True)
class Measurement:
    device_class: str
    model_version: str
    backend: str
    precision: str
    accuracy: float  # percent (top-1 or mAP x 100) on the device's own engine
    fps: float  # offline throughput, images/s
    p90_latency_ms: float  # single-stream
    memory_mb: float = 0.0
    device_id: str = ""
    stream_capacity: int | None = None  # live streams of the reference clip kept at stream_fps; None: not run
    stream_fps: float = 0.0

    @property
    def candidate(self) -> tuple[str, str, str]:
        return (self.model_version, self.backend, self.precision)


@dataclass
class Verdict:
    measurement: Measurement
    meets_goal: bool
    misses: list[str] = field(default_factory=list)


@dataclass
class Choice:
    device_class: str
    chosen: Measurement | None
    meets_goal: bool
    reason: str
    baseline: Measurement | None
    front: list[Measurement]

    @property
    def speedup(self) -> float | None:
        if not self.chosen or not self.baseline or self.baseline.fps <= 0:
            return None
        return self.chosen.fps / self.baseline.fps

    @property
    def accuracy_drop(self) -> float | None:
        if not self.chosen or not self.baseline:
            return None
        return self.baseline.accuracy - self.chosen.accuracy


def pareto_front(points: list[Measurement]) -> list[Measurement]:
    """Candidates no other candidate beats on both accuracy and FPS (ties kept once), by FPS."""
    front: list[Measurement] = []
    for p in points:
        dominated = any(
            (q.accuracy >= p.accuracy and q.fps >= p.fps) and (q.accuracy > p.accuracy or q.fps > p.fps)
            for q in points
        )
        if not dominated and not any(f.accuracy == p.accuracy and f.fps == p.fps for f in front):
            front.append(p)
    return sorted(front, key=lambda m: m.fps)


def judge(m: Measurement, goal: ClassGoal, baseline_accuracy: float, baseline_fps: float = 0.0) -> Verdict:
    misses: list[str] = []
    if goal.min_fps is not None and m.fps < goal.min_fps:
        misses.append(f"fps {m.fps:.1f} < {goal.min_fps:.1f}")
    if goal.min_speedup is not None and baseline_fps > 0 and m.fps < goal.min_speedup * baseline_fps:
        misses.append(f"fps speedup {m.fps / baseline_fps:.2f}x < {goal.min_speedup:.2f}x")
    if goal.max_p90_latency_ms is not None and m.p90_latency_ms > goal.max_p90_latency_ms:
        misses.append(f"p90 {m.p90_latency_ms:.2f} ms > {goal.max_p90_latency_ms:.2f} ms")
    drop = baseline_accuracy - m.accuracy
    if drop > goal.max_accuracy_drop + 1e-9:
        misses.append(f"accuracy drop {drop:.2f} > {goal.max_accuracy_drop:.2f} pt")
    if goal.max_memory_mb is not None and m.memory_mb > goal.max_memory_mb:
        misses.append(f"memory {m.memory_mb:.0f} MB > {goal.max_memory_mb:.0f} MB")
    stream_miss = _stream_miss(m, goal)
    if stream_miss:
        misses.append(stream_miss)
    return Verdict(m, not misses, misses)


def _streams_at_goal_rate(m: Measurement, goal: ClassGoal) -> int | None:
    """``m``'s measured stream capacity when it was measured at the goal's rate, else None."""
    if m.stream_capacity is None or goal.stream_fps is None:
        return None
    return m.stream_capacity if abs(m.stream_fps - goal.stream_fps) <= 0.01 * goal.stream_fps else None


def _stream_miss(m: Measurement, goal: ClassGoal) -> str:
    """Why ``m``'s measured stream capacity misses ``min_streams`` at ``stream_fps`` ("" when met)."""
    if goal.min_streams is None or goal.stream_fps is None:
        return ""
    if m.stream_capacity is None:
        return "stream capacity not measured"
    streams = _streams_at_goal_rate(m, goal)
    if streams is None:
        return f"stream capacity measured at {m.stream_fps:g} FPS, the goal is at {goal.stream_fps:g} FPS"
    if streams < goal.min_streams:
        return f"streams {streams} < {goal.min_streams} at {goal.stream_fps:g} FPS"
    return ""


def _shortfall(m: Measurement, goal: ClassGoal, baseline_accuracy: float, baseline_fps: float = 0.0) -> float:
    """How far from the goal, as a sum of relative misses (0 when met)."""
    s = 0.0
    if goal.min_fps is not None:
        s += max(0.0, (goal.min_fps - m.fps) / goal.min_fps)
    if goal.min_speedup is not None and baseline_fps > 0:
        floor = goal.min_speedup * baseline_fps
        s += max(0.0, (floor - m.fps) / floor)
    if goal.max_p90_latency_ms is not None:
        s += max(0.0, (m.p90_latency_ms - goal.max_p90_latency_ms) / goal.max_p90_latency_ms)
    s += max(0.0, (baseline_accuracy - m.accuracy) - goal.max_accuracy_drop) / 100.0 * 10
    if goal.max_memory_mb is not None and m.memory_mb:
        s += max(0.0, (m.memory_mb - goal.max_memory_mb) / goal.max_memory_mb)
    if goal.min_streams is not None:
        have = _streams_at_goal_rate(m, goal) or 0
        s += max(0, goal.min_streams - have) / goal.min_streams
    return s


def choose(
    device_class: str, measurements: list[Measurement], goal: ClassGoal, baseline_version: str
) -> Choice:
    """Pick the model for one class from what its devices measured."""
    mine = [m for m in measurements if m.device_class == device_class]
    base_runs = [m for m in mine if m.model_version == baseline_version]
    if not mine:
        return Choice(device_class, None, False, "no measurements for this class", None, [])
    # The baseline is the reference model as it ships today: its most accurate FP32 engine.
    baseline = max(base_runs, key=lambda m: (m.precision == "fp32", m.accuracy, m.fps)) if base_runs else None
    ref_acc = baseline.accuracy if baseline else max(m.accuracy for m in mine)
    ref_fps = baseline.fps if baseline else 0.0
    front = pareto_front(mine)
    verdicts = [judge(m, goal, ref_acc, ref_fps) for m in mine]
    passing = [v.measurement for v in verdicts if v.meets_goal]
    if passing:
        best = max(passing, key=lambda m: (m.accuracy, m.fps))
        return Choice(
            device_class, best, True, "most accurate candidate that meets the goal", baseline, front
        )
    closest = min(mine, key=lambda m: (_shortfall(m, goal, ref_acc, ref_fps), -m.accuracy))
    why = "; ".join(judge(closest, goal, ref_acc, ref_fps).misses)
    return Choice(
        device_class, closest, False, f"no candidate meets the goal; closest misses: {why}", baseline, front
    )
