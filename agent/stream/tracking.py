"""Object identities across frames: one ByteTrack per source (Roboflow's ``trackers`` package).

The tracker sees each source's detections in frame order, one step per processed frame (the
fixed-rate mode: source timestamps restart when an RTSP camera reconnects, which the timed mode
would read as time running backwards).
Off for classification models (there is nothing to track) and with ``tracker.kind: none``.
Detections the tracker has not confirmed yet keep track id -1.
"""

from __future__ import annotations

import warnings

import numpy as np

from agent.stream.infer import Detections
from agent.stream.spec import TrackerKind, TrackerSpec


class SourceTracker:
    def __init__(self, spec: TrackerSpec, frame_rate: float = 30.0) -> None:
        from trackers import ByteTrackTracker

        self.spec = spec
        self._tracker = ByteTrackTracker(
            lost_track_buffer=spec.lost_track_buffer,
            frame_rate=frame_rate,
            track_activation_threshold=spec.track_activation_threshold,
            minimum_consecutive_frames=spec.minimum_consecutive_frames,
            minimum_iou_threshold=spec.minimum_iou_threshold,
            high_conf_det_threshold=spec.high_conf_det_threshold,
        )

    def update(self, det: Detections, timestamp: float | None = None) -> Detections:
        import supervision as sv

        sv_det = sv.Detections(
            xyxy=det.boxes.reshape(-1, 4).astype(np.float32),
            confidence=det.scores.astype(np.float32),
            class_id=det.class_ids.astype(int),
            data={"label": np.asarray(det.labels, dtype=object)} if det.labels else {},
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tracked = self._tracker.update(sv_det, timestamp=timestamp)
        if len(tracked) == 0:
            return Detections(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64), [],
                              track_ids=np.zeros(0, np.int64))  # fmt: skip
        class_ids = tracked.class_id if tracked.class_id is not None else np.zeros(len(tracked), np.int64)
        labels = list(tracked.data["label"]) if "label" in tracked.data else [str(c) for c in class_ids]
        return Detections(
            tracked.xyxy.astype(np.float32),
            (tracked.confidence if tracked.confidence is not None else np.ones(len(tracked))).astype(
                np.float32
            ),
            np.asarray(class_ids, dtype=np.int64),
            [str(x) for x in labels],
            track_ids=np.asarray(tracked.tracker_id, dtype=np.int64),
        )


def make_tracker(spec: TrackerSpec, task: str, frame_rate: float = 30.0) -> SourceTracker | None:
    if task != "detection" or spec.kind is TrackerKind.NONE:
        return None
    return SourceTracker(spec, frame_rate)
