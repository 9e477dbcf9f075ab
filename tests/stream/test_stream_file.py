"""File sources through the whole pipeline on real media: the conveyor clip (H.264 mp4 made by
the tests), an H.265 mkv, an image folder, a stream whose resolution changes, broken files
beside a good one, a model the pipeline cannot decode, sources added and removed while running."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import av
import numpy as np
import pytest
from stream_testkit import assert_one_track_per_board, detector_artifact, encode_clip, read_jsonl

from agent.stream.pipeline import PipelineError
from agent.stream.spec import source_spec

sys_path_agent = Path(__file__).resolve().parents[1] / "agent"


def _events(p, path: Path, timeout: float = 90.0) -> list[dict]:
    assert p.wait(timeout), p.stats()
    p.stop()
    return read_jsonl(path)


def test_every_frame_of_a_file_gives_one_event_and_identities_follow_the_boards(
    make_pipeline, clip, detector, tmp_path
) -> None:
    video, gt = clip
    out = tmp_path / "events.jsonl"
    p = make_pipeline("sources.0.id=belt", f"sources.0.uri={video}", f"model.path={detector}",
                      f"sinks.jsonl.path={out}", f"sinks.mp4.path={tmp_path / 'annotated.mp4'}")  # fmt: skip
    events = _events(p, out)
    n = len(gt["frames"])
    assert sorted(e["frame"] for e in events) == list(range(n))  # every frame once, none made up
    assert {e["source_id"] for e in events} == {"belt"} and {e["model_version"] for e in events} == {
        "lanes:1"
    }
    stats = p.stats()["sources"][0]
    assert stats["decoded"] == stats["processed"] == n and stats["dropped"] == 0 and stats["state"] == "ended"
    assert_one_track_per_board(events, gt)  # identities: one track per board, one board per track
    # the annotated mp4 has every frame
    with av.open(str(tmp_path / "annotated.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == n


def test_on_change_publishes_only_entries_and_exits(make_pipeline, clip, detector, tmp_path) -> None:
    video, gt = clip
    out = tmp_path / "events.jsonl"
    p = make_pipeline("sources.0.id=belt", f"sources.0.uri={video}", f"model.path={detector}",
                      "events.rate=on_change", f"sinks.jsonl.path={out}")  # fmt: skip
    events = _events(p, out)
    assert 2 < len(events) < len(gt["frames"]) / 2
    seen: set[int] = set()
    for e in events:
        ids = {o["track_id"] for o in e["objects"] if o["track_id"] >= 0}
        assert set(e["entered"]) == ids - seen and set(e["left"]) == seen - ids
        seen = ids
    assert p.stats()["sources"][0]["processed"] == len(gt["frames"])


def test_h265_mkv_image_folder_and_classification(make_pipeline, clip, tmp_path) -> None:
    sys_path = str(sys_path_agent)
    import sys

    if sys_path not in sys.path:
        sys.path.insert(0, sys_path)
    from agent_testkit import make_artifact

    red = np.full((48, 64, 3), (200, 30, 30), np.uint8)
    blue = np.full((48, 64, 3), (30, 30, 200), np.uint8)
    mkv = encode_clip(tmp_path / "colours.mkv", [red] * 6 + [blue] * 6, codec="libx265")
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(5):
        av.VideoFrame.from_ndarray(red if i < 3 else blue, format="rgb24").to_image().save(
            folder / f"{i:03d}.png"
        )
    (folder / "004.png").write_bytes(b"not a png")  # an undecodable image is skipped, named in the log
    classifier = make_artifact(tmp_path / "models", "colour")
    out = tmp_path / "events.jsonl"
    p = make_pipeline("sources.0.id=mkv", f"sources.0.uri={mkv}", "sources.1.id=dir", f"sources.1.uri={folder}",
                      f"model.path={classifier}", f"sinks.jsonl.path={out}")  # fmt: skip
    events = _events(p, out)
    by_source = defaultdict(list)
    for e in sorted(events, key=lambda e: e["frame"]):
        by_source[e["source_id"]].append(e["label"])
        assert e["objects"] == [] and "track_id" not in e  # classification: no objects, no tracker
    assert by_source["mkv"] == ["red"] * 6 + ["blue"] * 6
    assert by_source["dir"] == ["red"] * 3 + ["blue"]


def test_a_stream_whose_resolution_changes_goes_on(make_pipeline, detector, tmp_path) -> None:
    small = [np.full((96, 160, 3), 172, np.uint8)] * 5
    large = [np.full((192, 320, 3), 172, np.uint8)] * 5
    a, b = encode_clip(tmp_path / "a.ts", small), encode_clip(tmp_path / "b.ts", large)
    joined = tmp_path / "joined.ts"  # MPEG-TS segments concatenate into one valid stream
    joined.write_bytes(a.read_bytes() + b.read_bytes())
    out = tmp_path / "events.jsonl"
    p = make_pipeline(
        "sources.0.id=cam", f"sources.0.uri={joined}", f"model.path={detector}", f"sinks.jsonl.path={out}"
    )
    events = _events(p, out)
    stats = p.stats()["sources"][0]
    assert stats["resolution_changes"] == 1 and stats["state"] == "ended"
    assert {(e["width"], e["height"]) for e in events} == {(160, 96), (320, 192)}
    assert len(events) == 10


def test_broken_sources_beside_a_good_one(make_pipeline, clip, detector, tmp_path) -> None:
    video, gt = clip
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(video.read_bytes()[: video.stat().st_size // 2])
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"\x00\x01 this is not a video " * 500)
    out = tmp_path / "events.jsonl"
    p = make_pipeline("sources.0.id=good", f"sources.0.uri={video}", "sources.1.id=missing",
                      f"sources.1.uri={tmp_path / 'nope.mp4'}", "sources.2.id=garbage", f"sources.2.uri={garbage}",
                      "sources.3.id=truncated", f"sources.3.uri={truncated}", f"model.path={detector}",
                      f"sinks.jsonl.path={out}")  # fmt: skip
    events = _events(p, out)
    stats = {s["source_id"]: s for s in p.stats()["sources"]}
    assert sum(1 for e in events if e["source_id"] == "good") == len(gt["frames"])
    assert stats["good"]["state"] == "ended" and stats["good"]["errors"] == 0
    for sid in ("missing", "garbage"):
        assert stats[sid]["state"] == "failed"
        assert stats[sid]["last_error"].startswith(f"source {sid}:")
    assert "not found" in stats["missing"]["last_error"]
    # the truncated mp4 has no index (moov) after the cut: refused by name, like any undecodable file
    assert stats["truncated"]["state"] == "failed" and "source truncated" in stats["truncated"]["last_error"]


def test_a_detection_model_without_its_detection_field_is_refused(make_pipeline, clip, tmp_path) -> None:
    video, _ = clip
    bare = detector_artifact(tmp_path / "bare", detection=False)
    with pytest.raises(PipelineError, match="pipeline test: .*no detection field"):
        make_pipeline("sources.0.id=a", f"sources.0.uri={video}", f"model.path={bare}")


def test_sources_added_and_removed_while_running(make_pipeline, clip, detector, tmp_path) -> None:
    video, gt = clip
    out = tmp_path / "events.jsonl"
    p = make_pipeline("sources.0.id=one", f"sources.0.uri={video}", "sources.0.loop=true", "sources.0.pace=true",
                      f"model.path={detector}", f"sinks.jsonl.path={out}")  # fmt: skip
    second = source_spec({"id": "two", "uri": str(video)})
    p.add_source(second)
    with pytest.raises(PipelineError, match="already"):
        p.add_source(second)
    import time

    deadline = time.monotonic() + 60
    while p.stats()["sources"][-1]["state"] != "ended" and time.monotonic() < deadline:
        time.sleep(0.1)
    p.remove_source("one")
    with pytest.raises(PipelineError, match="no source 'one'"):
        p.remove_source("one")
    assert p.wait(30)
    p.stop()
    events = read_jsonl(out)
    assert sorted(e["frame"] for e in events if e["source_id"] == "two") == list(range(len(gt["frames"])))
    ones = [e["frame"] for e in events if e["source_id"] == "one"]
    assert ones and ones == sorted(ones)  # the paced looping source ran, in order, until removed
    assert [s["source_id"] for s in p.stats()["sources"]] == ["two"]
    assert [s.id for s in p.spec.sources] == ["two"]


def test_a_file_lane_that_is_full_waits_and_is_woken_by_a_take_or_a_removal() -> None:
    """Back-pressure of file sources in the muxer: a put on a full lane blocks until the engine
    takes a frame of that lane; removing the source (or closing) releases it with False."""
    import threading
    import time as _time

    from agent.stream.metrics import StreamMetrics
    from agent.stream.muxer import Frame, FrameMuxer

    mux = FrameMuxer(max_batch=1, max_wait_s=0.0)
    for sid in ("a", "b"):
        mux.add(sid, StreamMetrics(sid), live=False, capacity=1)
    assert mux.put(Frame("a", 0, None, 0.0, np.zeros((2, 2, 3), np.uint8)))
    assert mux.put(Frame("b", 0, None, 0.0, np.zeros((2, 2, 3), np.uint8)))
    results: dict[str, bool] = {}

    def blocked_put(sid: str) -> None:
        results[sid] = mux.put(Frame(sid, 1, None, 0.0, np.zeros((2, 2, 3), np.uint8)))

    threads = {sid: threading.Thread(target=blocked_put, args=(sid,)) for sid in ("a", "b")}
    for t in threads.values():
        t.start()
    _time.sleep(0.3)
    assert results == {}  # both lanes full: both wait
    assert [f.source_id for f in mux.next_batch(1.0)] == ["a"]
    threads["a"].join(2.0)
    assert results == {"a": True}  # a's frame taken: a's source goes on, b's still waits
    mux.remove("b")
    threads["b"].join(2.0)
    assert results == {"a": True, "b": False}
    assert [(f.source_id, f.index) for f in mux.next_batch(1.0)] == [("a", 1)]
