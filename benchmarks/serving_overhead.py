"""Images/s through the agent's Open Inference Protocol gRPC server vs an in-process ONNX
Runtime session: same model, same batch, same thread count, one run. Prints the ratio
(goal >= 0.95 at batch 8).

The server is ``edgeloop agent serve`` in its own process (as on a device); the client sends
raw FP32 tensors (what tritonclient sends) one request at a time. The in-process baseline is a
plain ``onnxruntime.InferenceSession`` with the same intra-op threads. Rounds alternate
in-process / gRPC so drift and the neighbours' load hit both; the median round is reported.

    python benchmarks/serving_overhead.py                       # resnet18, batch 8, 2 threads
    python benchmarks/serving_overhead.py --model mobilenet_v3_small --batch 8 --rounds 5
    python benchmarks/serving_overhead.py --onnx path/to/model.onnx
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from _agent_models import export_torchvision, synthetic_images  # noqa: E402


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", help="torchvision backbone (random init)")
    ap.add_argument("--onnx", type=Path, help="use this model (with manifest.json beside it) instead")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20, help="requests per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-precision-matrix")
    args = ap.parse_args()

    import grpc
    import onnxruntime as ort

    from protos import inference_pb2, inference_pb2_grpc

    onnx_path = args.onnx or export_torchvision(args.model, args.workdir / args.model,
                                                synthetic_images(args.workdir / "images", 64))  # fmt: skip
    port = free_port()
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(args.workdir / "agent-serving"), PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "agent", "serve", str(onnx_path), "--host", "127.0.0.1",
         "--port", str(port), "--threads", str(args.threads)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    try:
        line = server.stdout.readline()
        if not line.startswith("serving"):
            raise SystemExit(f"server did not start: {line!r}")
        name = line.split()[1]
        so = ort.SessionOptions()
        so.intra_op_num_threads = args.threads
        so.inter_op_num_threads = 1
        session = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        x = np.random.default_rng(0).standard_normal((args.batch, 3, 224, 224)).astype(np.float32)
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 28),
                                          ("grpc.max_send_message_length", 1 << 28)]))  # fmt: skip

        def in_process() -> np.ndarray:
            return session.run(None, {input_name: x})[0]

        def request():
            req = inference_pb2.ModelInferRequest(model_name=name)
            req.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
            req.raw_input_contents.append(x.tobytes())
            return req

        def over_grpc() -> np.ndarray:
            resp = stub.ModelInfer(request())
            return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(list(resp.outputs[0].shape))

        def pipelined(n: int) -> None:
            """``n`` requests with two in flight: a client's next tensor travels while the
            server computes (how a camera pipeline or tritonclient's async_infer uses it)."""
            pending = [stub.ModelInfer.future(request()) for _ in range(min(2, n))]
            sent = len(pending)
            while pending:
                pending.pop(0).result()
                if sent < n:
                    pending.append(stub.ModelInfer.future(request()))
                    sent += 1

        ref, got = in_process(), over_grpc()  # warm-up both, and check they agree
        if not np.allclose(ref, got, atol=1e-3 * max(1.0, float(np.abs(ref).max()))):
            raise SystemExit("gRPC answer differs from the in-process session")
        for _ in range(2):
            in_process(), over_grpc()
        local, remote, piped = [], [], []

        def sequential(fn):
            return lambda: [fn() for _ in range(args.iters)]

        for _ in range(args.rounds):
            for run_round, sink in (
                (sequential(in_process), local),
                (sequential(over_grpc), remote),
                (lambda: pipelined(args.iters), piped),
            ):
                start = time.perf_counter()
                run_round()
                sink.append(args.batch * args.iters / (time.perf_counter() - start))
        lo, re_, pi = statistics.median(local), statistics.median(remote), statistics.median(piped)
        paired = statistics.median(r / loc for r, loc in zip(remote, local, strict=True))
        paired_pi = statistics.median(p / loc for p, loc in zip(piped, local, strict=True))
        print(f"model {onnx_path} ({name}), batch {args.batch}, threads {args.threads}, "
              f"{args.rounds} rounds x {args.iters} requests; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        print(f"in-process onnxruntime: {lo:8.1f} img/s  (rounds: {', '.join(f'{v:.1f}' for v in local)})")
        print(f"agent gRPC, 1 in flight: {re_:8.1f} img/s  (rounds: {', '.join(f'{v:.1f}' for v in remote)})")
        print(f"agent gRPC, 2 in flight: {pi:8.1f} img/s  (rounds: {', '.join(f'{v:.1f}' for v in piped)})")
        print(f"ratio gRPC / in-process, 1 in flight: {re_ / lo:.3f} (median of paired rounds {paired:.3f})")
        print(f"ratio gRPC / in-process, 2 in flight: {pi / lo:.3f} (median of paired rounds {paired_pi:.3f})"
              "  (goal >= 0.95)")  # fmt: skip
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
