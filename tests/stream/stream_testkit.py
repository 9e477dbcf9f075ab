"""Real media and a real (hand-built) detector for the stream tests.

``lane_detector``: an ONNX graph, not a mock, that finds the boards of the synthetic conveyor
clip: per horizontal lane of its input, the pixels whose darkest channel is below the belt's
grey form a mask, and the first/last masked column and row are the board's box (ArgMax, with
``select_last_index`` for the far edge). One query per lane, logits +8 / -8, boxes xyxy in input
pixels: the manifest's ``detection`` field says so, exactly as a trained RT-DETR's does. It runs
through ONNX Runtime in the agent's engines like any model; training a detector would cost CI
minutes for no more realism in the pipeline under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from protos import artifact_pb2
from protos.manifest import save_manifest, sha256_file

CLIP_SIZE = (320, 192)  # two lanes of boards
INPUT_W, INPUT_H = 160, 96
LANES = 2
OPSET = 18


def lane_detector(path: Path, *, threshold: float = 110 / 255, lanes: int = LANES) -> Path:
    lane_h = INPUT_H // lanes
    c = lambda name, value, dtype=np.int64: numpy_helper.from_array(np.asarray(value, dtype=dtype), name)  # noqa: E731
    inits = [c("thr", threshold, np.float32), c("two", 2.0, np.float32), c("one", 1.0, np.float32),
             c("eight", 8.0, np.float32), c("ax1", [1]), c("ax2", [2]), c("i1", 1)]  # fmt: skip
    nodes = [
        helper.make_node("ReduceMin", ["images", "ax1"], ["minc"], keepdims=0),
        helper.make_node("Less", ["minc", "thr"], ["maskb"]),
        helper.make_node("Cast", ["maskb"], ["mask"], to=TensorProto.FLOAT),
    ]
    box_names, logit_names = [], []
    for lane in range(lanes):
        p = f"l{lane}_"
        inits += [c(p + "s", [lane * lane_h]), c(p + "e", [(lane + 1) * lane_h]), c(p + "off", lane * lane_h)]
        nodes += [
            helper.make_node("Slice", ["mask", p + "s", p + "e", "ax1"], [p + "sub"]),
            helper.make_node("ReduceMax", [p + "sub", "ax1"], [p + "col"], keepdims=0),  # [N, W]
            helper.make_node("ReduceMax", [p + "sub", "ax2"], [p + "row"], keepdims=0),  # [N, lane_h]
            helper.make_node("ArgMax", [p + "col"], [p + "x0"], axis=1, keepdims=1),
            helper.make_node("ArgMax", [p + "col"], [p + "x1m"], axis=1, keepdims=1, select_last_index=1),
            helper.make_node("Add", [p + "x1m", "i1"], [p + "x1"]),
            helper.make_node("ArgMax", [p + "row"], [p + "y0r"], axis=1, keepdims=1),
            helper.make_node("ArgMax", [p + "row"], [p + "y1r"], axis=1, keepdims=1, select_last_index=1),
            helper.make_node("Add", [p + "y0r", p + "off"], [p + "y0"]),
            helper.make_node("Add", [p + "y1r", p + "off"], [p + "y1m"]),
            helper.make_node("Add", [p + "y1m", "i1"], [p + "y1"]),
            helper.make_node("Concat", [p + "x0", p + "y0", p + "x1", p + "y1"], [p + "boxi"], axis=1),
            helper.make_node("Cast", [p + "boxi"], [p + "boxf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [p + "boxf", "ax1"], [p + "box"]),  # [N, 1, 4]
            helper.make_node("ReduceMax", [p + "col", "ax1"], [p + "score"], keepdims=1),  # [N, 1]
            helper.make_node("Mul", [p + "score", "two"], [p + "s2"]),
            helper.make_node("Sub", [p + "s2", "one"], [p + "s3"]),
            helper.make_node("Mul", [p + "s3", "eight"], [p + "lg"]),
            helper.make_node("Unsqueeze", [p + "lg", "ax2"], [p + "logit"]),  # [N, 1, 1]
        ]
        box_names.append(p + "box")
        logit_names.append(p + "logit")
    nodes += [
        helper.make_node("Concat", box_names, ["boxes"], axis=1),
        helper.make_node("Concat", logit_names, ["logits"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "lanes",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, INPUT_H, INPUT_W])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", lanes, 1]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", lanes, 4]),
        ],  # fmt: skip
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edgeloop-tests"
    )
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def detector_artifact(root: Path, version: str = "lanes:1", *, detection: bool = True, **kw) -> Path:
    """``root/model.onnx`` + ``manifest.json``; ``detection=False`` leaves the field out (refused)."""
    onnx_path = lane_detector(root / "model.onnx", **kw)
    manifest = artifact_pb2.Manifest(
        schema_version=1, name="lanes", version=version, task="detection", labels=["board"],
        inputs=[artifact_pb2.TensorSpec(name="images", dtype="float32", shape=[-1, 3, INPUT_H, INPUT_W], layout="NCHW")],
        preprocessing=artifact_pb2.Preprocessing(height=INPUT_H, width=INPUT_W, resize_mode="stretch",
                                                 interpolation="bilinear", color_order="RGB", scale=1 / 255),
        sha256=sha256_file(onnx_path), onnx_file="model.onnx", precision="fp32", opset=OPSET,
    )  # fmt: skip
    if detection:
        manifest.detection.CopyFrom(artifact_pb2.DetectionOutput(
            boxes_output="boxes", logits_output="logits", box_format="xyxy", normalized=False,
            score_activation="sigmoid"))  # fmt: skip
    save_manifest(manifest, root / "manifest.json")
    return onnx_path


def conveyor_clip(path: Path, seconds: float = 4.0, fps: float = 15.0, seed: int = 0) -> tuple[Path, dict]:
    from trainer.tasks.detection.video import synthesize_video

    if not path.exists():
        synthesize_video(path, seconds, fps, CLIP_SIZE, seed)
    return path, json.loads(path.with_suffix(".gt.json").read_text())


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def iou(a, b) -> float:
    ax0, ay0, ax1, ay1 = a
    bx0, by0, bx1, by1 = b
    iw, ih = max(0.0, min(ax1, bx1) - max(ax0, bx0)), max(0.0, min(ay1, by1) - max(ay0, by0))
    inter = iw * ih
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0


def board_boxes(gt: dict, frame: int) -> list[dict]:
    return [o for o in gt["frames"][frame]["objects"] if o["label"] == "board"]


def assert_one_track_per_board(events: list[dict], gt: dict) -> None:
    """Each ground-truth board seen for 8 frames or more is one confirmed track (found from its
    second frame on, give or take three frames), and each track is one board. Tracking only
    manages this when it sees the source's frames in order."""
    from collections import defaultdict

    gt_to_tracks: dict = defaultdict(set)
    track_to_gt: dict = defaultdict(set)
    matched: dict = defaultdict(int)
    for e in events:
        for o in e["objects"]:
            best = max(board_boxes(gt, e["frame"]), key=lambda g: iou(o["box"], g["box"]), default=None)
            if best is None or iou(o["box"], best["box"]) < 0.5:
                continue
            if o["track_id"] is not None and o["track_id"] >= 0:
                gt_to_tracks[best["id"]].add(o["track_id"])
                track_to_gt[o["track_id"]].add(best["id"])
                matched[best["id"]] += 1
    visible: dict = defaultdict(int)
    for f in gt["frames"]:
        for o in f["objects"]:
            if o["label"] == "board":
                visible[o["id"]] += 1
    long_lived = [b for b, count in visible.items() if count >= 8]
    assert len(long_lived) >= 3
    for board in long_lived:
        assert len(gt_to_tracks[board]) == 1, (board, gt_to_tracks[board])
        assert matched[board] >= visible[board] - 3, (board, matched[board], visible[board])
    assert all(len(boards) == 1 for boards in track_to_gt.values()), dict(track_to_gt)


def encode_clip(path: Path, frames: list[np.ndarray], fps: int = 15, codec: str = "libx264") -> Path:
    """Frames into a clip through PyAV (FFmpeg's encoders): H.264, H.265 (libx265), mp4 or mkv."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames[0].shape[1], frames[0].shape[0], "yuv420p"
        if codec == "libx265":
            stream.options = {"x265-params": "log-level=error"}
        for f in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
