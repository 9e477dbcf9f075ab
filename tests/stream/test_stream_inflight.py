"""Several engine calls in flight (``model.inflight``): batches run at once on the real engine,
and each source's frames are still tracked and published in order, every one of them once."""

from __future__ import annotations

import threading
from collections import defaultdict

import pytest
from stream_testkit import assert_one_track_per_board, read_jsonl

from agent.engines import build_engine
from agent.model_spec import resolve_model
from agent.probe import probe_hardware, usable_cores
from agent.stream.infer import engine_inflight, engine_threads
from agent.stream.order import InOrder
from agent.stream.spec import SpecError, load_pipeline_spec


def test_three_calls_in_flight_publish_every_frame_of_every_source_in_order(
    make_pipeline, clip, detector, tmp_path
) -> None:
    """Four copies of the clip, batches of two, three engine workers: batches finish out of
    order, the publisher puts them back. Events are counted against the frames, and frame
    numbers strictly increase per source in the order the sink got them."""
    video, gt = clip
    out = tmp_path / "events.jsonl"
    sources = [arg for i in range(4) for arg in (f"sources.{i}.id=s{i}", f"sources.{i}.uri={video}")]
    p = make_pipeline(*sources, f"model.path={detector}", "model.inflight=3", "model.threads=1",
                      "batching.max_batch=2", "batching.max_wait_ms=0", f"sinks.jsonl.path={out}")  # fmt: skip
    assert p.wait(120), p.stats()
    stats = p.stats()
    p.stop()
    events = read_jsonl(out)  # in the order they were written
    n = len(gt["frames"])
    by_source: dict[str, list[int]] = defaultdict(list)
    for e in events:
        by_source[e["source_id"]].append(e["frame"])
    assert sorted(by_source) == ["s0", "s1", "s2", "s3"]
    for sid, frames in by_source.items():
        assert frames == list(range(n)), (sid, frames)  # each once, strictly increasing, none made up
    assert len(events) == 4 * n
    assert all(s["processed"] == s["decoded"] == n and s["dropped"] == 0 for s in stats["sources"])
    assert stats["inflight"] == 3 and stats["batches"] >= 2 * n  # batches of at most two frames
    if usable_cores() >= 2:  # one thread a call: the engine admits a call per core
        assert stats["inflight_peak"] >= 2, stats
    for sid in by_source:  # each source's tracker saw its frames in order
        assert_one_track_per_board([e for e in events if e["source_id"] == sid], gt)


def test_in_order_hands_results_on_by_batch_number() -> None:
    order: InOrder[str] = InOrder(window=2)
    order.put(1, "b")
    assert order.get(0.01) == (False, None)  # batch 0 is not back yet: nothing goes out
    order.put(0, "a")
    assert order.get(0.01) == (True, "a") and order.get(0.01) == (True, "b")
    with pytest.raises(ValueError, match="batch 1 was already handed in"):
        order.put(1, "again")
    # a worker two batches ahead of the next one waits for the window; batch 2 goes in freely
    ahead_done = threading.Event()
    ahead = threading.Thread(target=lambda: (order.put(4, "e"), ahead_done.set()))
    ahead.start()
    order.put(3, "d")
    assert not ahead_done.wait(0.3)
    order.put(2, "c")
    assert order.get(0.01) == (True, "c")
    assert ahead_done.wait(5)
    ahead.join()
    assert [order.get(0.01)[1] for _ in range(2)] == ["d", "e"]
    order.close()
    assert order.get(5) == (False, None)  # closed and empty: no wait
    with pytest.raises(ValueError, match="window"):
        InOrder(0)


def test_inflight_and_threads_share_the_cores_and_the_engine_admits_as_many_runs(
    detector, profile, cache
) -> None:
    spec = load_pipeline_spec({"sources": []}, []).model
    cores = usable_cores()
    assert engine_inflight(spec) == min(2, cores)
    assert engine_threads(spec) == max(1, cores // min(2, cores))
    assert engine_threads(spec, agent_threads=3) == 3  # the agent's --threads wins
    explicit = load_pipeline_spec({"sources": []}, ["model.inflight=4", "model.threads=2"]).model
    assert (engine_inflight(explicit), engine_threads(explicit)) == (4, 2)
    with pytest.raises(SpecError, match="model.inflight"):
        load_pipeline_spec({"sources": []}, ["model.inflight=-1"])
    resolved = resolve_model(detector)
    one = build_engine(resolved, profile=profile, cache=cache, threads=1).engine
    every = build_engine(resolved, profile=probe_hardware(), cache=cache, threads=None).engine
    assert one.concurrency == cores  # one intra-op thread a run: one run per core
    assert every.concurrency == 1  # the runtime's default pool takes every core: one run at a time
