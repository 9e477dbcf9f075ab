"""The event a pipeline publishes for a frame (schema in docs/stream.md), and the per-source rate.

In the spirit of DeepStream's minimal message schema: which source and frame, when, what model,
and the objects (track id, label, score, box in the frame's pixels). A classification model
gives ``label``/``score`` for the frame and no objects. ``on_change`` publishes only when the set
of objects changed (a track id entered or left; for untracked output the set of labels; for
classification the label), and the event says what entered and left.
"""

from __future__ import annotations

import time

from agent.stream.infer import Detections
from agent.stream.muxer import Frame
from agent.stream.spec import EventRate

EVENT_SCHEMA_VERSION = 1


def _key(det: Detections) -> frozenset:
    if det.frame_label is not None:
        return frozenset({det.frame_label})
    if det.track_ids is not None:
        return frozenset(int(t) for t in det.track_ids if t >= 0)
    return frozenset(det.labels)


def build_event(pipeline: str, frame: Frame, det: Detections, model_version: str,
                change: tuple[list, list] | None = None) -> dict:  # fmt: skip
    """The JSON-ready event for one processed frame."""
    h, w = frame.height, frame.width
    objects = []
    for i in range(len(det.scores)):
        objects.append({
            "track_id": int(det.track_ids[i]) if det.track_ids is not None else None,
            "label": det.labels[i],
            "class_id": int(det.class_ids[i]),
            "score": round(float(det.scores[i]), 4),
            "box": [round(float(v), 1) for v in det.boxes[i]],
        })  # fmt: skip
    event = {
        "schema_version": EVENT_SCHEMA_VERSION,
        "pipeline": pipeline,
        "source_id": frame.source_id,
        "frame": frame.index,
        "pts_s": None if frame.pts_s is None else round(frame.pts_s, 6),
        "captured_at": round(frame.captured, 6),
        "ts": round(time.time(), 6),
        "model_version": model_version,
        "width": w,
        "height": h,
        "objects": objects,
    }
    if det.frame_label is not None:
        event["label"] = det.frame_label
        event["score"] = round(float(det.frame_score or 0.0), 4)
    if change is not None:
        event["entered"], event["left"] = change
    return event


class RateGate:
    """Per source: publish every frame, or only on change (remembering what was last published)."""

    def __init__(self) -> None:
        self._last: dict[str, frozenset] = {}

    def check(self, source_id: str, det: Detections, rate: EventRate) -> tuple[bool, tuple[list, list]]:
        key = _key(det)
        before = self._last.get(source_id)
        entered = sorted(key - before, key=str) if before is not None else sorted(key, key=str)
        left = sorted(before - key, key=str) if before is not None else []
        changed = before is None or key != before
        self._last[source_id] = key
        if rate is EventRate.EVERY_FRAME:
            return True, (entered, left)
        return changed, (entered, left)

    def forget(self, source_id: str) -> None:
        self._last.pop(source_id, None)
