"""Dynamic batching: concurrent small requests share one engine run, and every request gets
exactly its own rows back."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest

from agent.backends.base import Engine
from agent.batching import DynamicBatcher
from agent.dataplane import DataPlane
from agent.server import InferenceServer
from agent.slots import ModelSlots
from protos import inference_pb2, inference_pb2_grpc


class Counting(Engine):
    """Wraps an engine and counts its runs (and can be told to fail)."""

    def __init__(self, inner: Engine) -> None:
        self.inner, self.runs, self.fail = inner, 0, False
        self.backend, self.precision, self.device = inner.backend, inner.precision, inner.device

    inputs = property(lambda self: self.inner.inputs)
    outputs = property(lambda self: self.inner.outputs)

    def run(self, feeds):
        self.runs += 1
        if self.fail:
            raise RuntimeError("engine failed")
        return self.inner.run(feeds)

    def memory_bytes(self) -> int:
        return 0


def solid(channel: int, value: float, rows: int = 1) -> np.ndarray:
    x = np.zeros((rows, 3, 16, 16), np.float32)
    x[:, channel] = value
    return x


@pytest.fixture
def engine(model_path, profile, cache):
    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    assert slots.deploy(model_path).ok
    return Counting(slots.active.engine)


def test_concurrent_requests_are_merged_and_split_back(engine) -> None:
    batcher = DynamicBatcher(max_batch=8, max_delay_s=0.05)
    results: dict[int, np.ndarray] = {}
    inputs = {i: solid(i % 3, 0.1 + 0.1 * i, rows=1 + i % 2) for i in range(8)}
    expected = {i: engine.inner.run({"images": x})["logits"] for i, x in inputs.items()}
    engine.runs = 0
    barrier = threading.Barrier(8)

    def client(i: int) -> None:
        barrier.wait()
        results[i] = batcher.run(engine, {"images": inputs[i]})["logits"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    for i in range(8):
        assert results[i].shape == expected[i].shape
        assert np.allclose(results[i], expected[i], atol=1e-5), i
    assert engine.runs < 8  # some requests shared a run (12 rows, at most 8 per run)


def test_engine_error_reaches_every_request_of_the_batch(engine) -> None:
    batcher = DynamicBatcher(max_batch=8, max_delay_s=0.05)
    engine.fail = True
    errors = []

    def client() -> None:
        try:
            batcher.run(engine, {"images": solid(0, 0.5)})
        except RuntimeError as exc:
            errors.append(str(exc))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    batcher.close()
    assert errors == ["engine failed"] * 4


def test_server_with_dynamic_batching(model_path, profile, cache) -> None:
    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    assert slots.deploy(model_path).ok
    batcher = DynamicBatcher(max_batch=4, max_delay_s=0.02)
    server = InferenceServer(DataPlane(slots, batcher=batcher), host="127.0.0.1", port=0).start()
    try:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(f"127.0.0.1:{server.port}"))
        futures = []
        for i in range(6):
            req = inference_pb2.ModelInferRequest(model_name="colour")
            req.inputs.add(name="images", datatype="FP32", shape=[1, 3, 16, 16])
            req.raw_input_contents.append(solid(i % 3, 0.9).tobytes())
            futures.append((i, stub.ModelInfer.future(req)))
        for i, fut in futures:
            logits = np.frombuffer(fut.result(timeout=30).raw_output_contents[0], np.float32)
            assert logits.argmax() == 2 - i % 3  # channel R,G,B -> labels (blue, green, red)
    finally:
        server.stop()
        batcher.close()


def test_static_batch_engine_gets_padded_batches(artifacts, profile, cache) -> None:
    """What the benchmark's SUT relies on: single rows submitted for a graph fixed at batch 4
    share padded runs of exactly 4 rows, and each request gets only its own row back."""
    from agent_testkit import make_artifact

    slots = ModelSlots(profile=profile, cache=cache, threads=1)
    assert slots.deploy(make_artifact(artifacts, "static4", version="colour:static4", batch=4)).ok
    engine = Counting(slots.active.engine)
    inputs = [solid(i % 3, 0.9) for i in range(5)]
    expected = [engine.inner.run({"images": np.repeat(x, 4, axis=0)})["logits"][:1] for x in inputs]
    engine.runs = 0
    batcher = DynamicBatcher(max_batch=8, max_delay_s=0.2)
    try:
        futures = [batcher.submit(engine, {"images": x}) for x in inputs]
        results = [f.result(timeout=30)["logits"] for f in futures]
    finally:
        batcher.close()
    for got, want in zip(results, expected, strict=True):
        assert got.shape == (1, 3) and np.allclose(got, want, atol=1e-5)
    assert engine.runs == 2  # 4 rows, then 1 row padded to 4


def test_a_preferred_batch_size_runs_without_waiting_out_the_delay(engine) -> None:
    """Two rows reach the preferred size 2: they run together at once, long before the 120 s
    queue delay (a batcher that waited would time the futures out)."""
    executions = []
    batcher = DynamicBatcher(max_batch=8, max_delay_s=120, preferred_batch_sizes=(2,),
                             on_batch=lambda tag, *sizes: executions.append((tag, sizes[0])))  # fmt: skip
    try:
        futures = [batcher.submit(engine, {"images": solid(c, 0.9)}, tag=("colour", "v")) for c in (0, 2)]
        outs = [f.result(timeout=60)["logits"] for f in futures]
        assert [o.argmax() for o in outs] == [2, 0]  # red, blue
        assert executions == [(("colour", "v"), 2)] and engine.runs == 1
    finally:
        batcher.close()
