"""Every server refuses a port in use: a second controller (gRPC or HTTP port) and a second
agent (live-inference port) exit non-zero naming the port, and the first keeps serving alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import harness as h

from protos import inference_pb2_grpc


def _run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_a_second_controller_on_a_taken_port_exits_with_the_reason(tmp_path: Path) -> None:
    first = h.controller(tmp_path / "first").start()
    try:
        for grpc_port, http_port, which in ((first.grpc_port, h.free_port(), "gRPC"),
                                            (h.free_port(), first.http_port, "HTTP")):  # fmt: skip
            second = h.controller(tmp_path / f"second-{which}", grpc_port=grpc_port, http_port=http_port)
            done = _run(second.cmd, second.env)
            taken = grpc_port if which == "gRPC" else http_port
            assert done.returncode != 0, done.stdout[-2000:]
            assert f":{taken}" in done.stderr and "in use" in done.stderr and which in done.stderr, (
                done.stderr
            )
        assert first.alive() and first.healthy()
    finally:
        first.stop()


def test_a_second_agent_on_a_taken_inference_port_exits_and_the_first_keeps_all_clients(
    tmp_path: Path,
) -> None:
    kit = h.testkit()
    one = kit.make_artifact(tmp_path / "m", "one", version="colour:1")
    two = kit.make_artifact(tmp_path / "m", "two", version="colour:2", seed=1)
    port = h.free_port()
    serve = [sys.executable, "-m", "edgeloop.cli", "agent", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--threads", "1", "--mqtt-url", ""]  # fmt: skip
    first = h.Proc(cmd=[*serve, str(one)], log=tmp_path / "first.log", env=h._env()).start()
    try:
        h.wait_until(lambda: h.serving(port, "colour") or not first.alive(), 60, "first agent serves")
        assert first.alive(), first.tail()
        done = _run([*serve, str(two)], h._env())
        assert done.returncode != 0 and f"127.0.0.1:{port}" in done.stderr and "in use" in done.stderr, done
        # no request of a client reaches a newcomer: every answer is the first agent's model
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
            answers = {stub.ModelInfer(h.blue_request("colour"), timeout=10).model_version for _ in range(20)}
        assert answers == {"colour:1"}
    finally:
        first.stop()
