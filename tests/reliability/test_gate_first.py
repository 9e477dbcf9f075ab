"""Gate before serve: a client sends live requests throughout a rollout of a 0 %-accurate
candidate; the device measures the candidate in its inactive slot, the gate fails, and the
candidate answers 0 of those requests (the old model answers all of them). A good candidate is
then switched in only after it was measured."""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import grpc
import harness as h


class Client:
    """Sends ModelInfer by model name (no version) in a loop; counts who answered."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: Counter[str] = Counter()
        self.failures: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            from protos import inference_pb2_grpc

            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            request = h.blue_request("colour")
            while not self.stop.is_set():
                try:
                    self.answers[stub.ModelInfer(request, timeout=10).model_version] += 1
                except grpc.RpcError as exc:
                    self.failures.append(f"{exc.code().name}: {exc.details()}")

    def total(self) -> int:
        return sum(self.answers.values())


def test_a_failing_candidate_serves_zero_live_requests(tmp_path: Path) -> None:
    good, better, bad, shard = h.colour_models(tmp_path)
    ctl = h.controller(tmp_path / "ctl").start()
    port = h.free_port()
    agent = h.agent(tmp_path / "agent", ctl.target, name="gate-1", serve_port=port).start()
    api = ctl.api()
    client = Client(port)
    try:
        for model in (good, better, bad):
            h.import_model(api, model)
        eval_id = h.import_shard(api, shard)
        h.wait_until(lambda: h.online(api, "gate-1"), 60, "agent enrolled")
        assert h.finished(api, h.rollout(api, "colour:1", eval_id)["id"])["state"] == "succeeded"
        client.thread.start()
        h.wait_until(lambda: client.total() >= 5, 30, "client answered")
        before = client.total()
        failed = h.finished(api, h.rollout(api, "colour:3", eval_id)["id"])
        during = client.total() - before
        assert failed["state"] == "aborted", failed["deployments"]
        message = failed["deployments"][0]["message"]
        assert "gate failed" in message and "never switched in" in message, message
        h.wait_until(lambda: client.total() >= before + during + 5, 30, "still answering after")
        assert during > 0, "the client sent requests while the candidate was measured"
        assert client.answers["colour:3"] == 0, client.answers  # the candidate never served
        assert client.failures == []
        # a good candidate: measured in the inactive slot, then switched in
        passed = h.finished(api, h.rollout(api, "colour:2", eval_id)["id"])
        assert passed["state"] == "succeeded", passed
        h.wait_until(lambda: client.answers["colour:2"] > 0, 30, "colour:2 serves")
        assert client.failures == []
        h.wait_until(lambda: h.device(api, "gate-1")["active_version"] == "colour:2", 30, "device table")
    finally:
        client.stop.set()
        api.close()
        agent.stop()
        ctl.stop()
