"""Images/s through the agent's Open Inference Protocol servers - gRPC and HTTP/REST with the
binary tensor extension - vs an in-process ONNX Runtime session: same model, same batch, same
thread count, one run, batch 1 and batch 8 by default. Prints one ratio per protocol and batch
(goal >= 0.95 at batch 8).

The server is ``edgeloop agent serve`` in its own process (as on a device) with both ports on;
the clients send raw FP32 tensors: gRPC ``raw_input_contents`` (what tritonclient.grpc sends)
and an HTTP body of a JSON header + binary tensor (``Inference-Header-Content-Length``, what
tritonclient.http sends by default), binary outputs back. Each is measured with one request in
flight and with two (the next tensor travels while the server computes, as a camera pipeline or
``async_infer`` does). The in-process baseline is a plain ``onnxruntime.InferenceSession`` with
the same intra-op threads. Rounds alternate in-process / gRPC / HTTP so drift and the
neighbours' load hit all; the median of the paired per-round ratios is reported.

    python benchmarks/serving_overhead.py                       # resnet18, batch 1 and 8, 2 threads
    python benchmarks/serving_overhead.py --model mobilenet_v3_small --batches 8 --rounds 5
    python benchmarks/serving_overhead.py --onnx path/to/model.onnx
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
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


def pipelined(submit: Callable[[], Callable[[], object]], n: int, depth: int = 2) -> None:
    """``n`` requests with ``depth`` in flight; ``submit()`` sends one and returns its waiter."""
    pending = [submit() for _ in range(min(depth, n))]
    sent = len(pending)
    while pending:
        pending.pop(0)()
        if sent < n:
            pending.append(submit())
            sent += 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="resnet18", help="torchvision backbone (random init)")
    ap.add_argument("--onnx", type=Path, help="use this model (with manifest.json beside it) instead")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes (default 1,8)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=20, help="requests per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-precision-matrix")
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",") if b.strip()]

    import grpc
    import httpx
    import onnxruntime as ort

    from protos import inference_pb2, inference_pb2_grpc

    onnx_path = args.onnx or export_torchvision(args.model, args.workdir / args.model,
                                                synthetic_images(args.workdir / "images", 64))  # fmt: skip
    port, http_port = free_port(), free_port()
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(args.workdir / "agent-serving"), PYTHONPATH=str(ROOT))
    server = subprocess.Popen(
        [sys.executable, "-m", "edgeloop.cli", "agent", "serve", str(onnx_path), "--host", "127.0.0.1",
         "--port", str(port), "--http-port", str(http_port), "--threads", str(args.threads),
         "--max-request-batch", str(max(batches))],
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
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(
            f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 1 << 28),
                                          ("grpc.max_send_message_length", 1 << 28)]))  # fmt: skip
        http_clients = [httpx.Client(base_url=f"http://127.0.0.1:{http_port}", timeout=60) for _ in range(2)]
        pool = ThreadPoolExecutor(2)
        rows = []
        turn = itertools.count()
        print(f"model {onnx_path} ({name}), threads {args.threads}, {args.rounds} rounds x {args.iters} "
              f"requests; load average {os.getloadavg()[0]:.2f}")  # fmt: skip
        for batch in batches:
            x = np.random.default_rng(0).standard_normal((batch, 3, 224, 224)).astype(np.float32)

            def in_process(x=x) -> np.ndarray:
                return session.run(None, {input_name: x})[0]

            def grpc_request(x=x):
                req = inference_pb2.ModelInferRequest(model_name=name)
                req.inputs.add(name=input_name, datatype="FP32", shape=list(x.shape))
                req.raw_input_contents.append(x.tobytes())
                return req

            def over_grpc() -> np.ndarray:
                resp = stub.ModelInfer(grpc_request())
                return np.frombuffer(resp.raw_output_contents[0], np.float32).reshape(
                    list(resp.outputs[0].shape)
                )

            header = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                                             "parameters": {"binary_data_size": x.nbytes}}],
                                 "parameters": {"binary_data_output": True}}).encode()  # fmt: skip
            headers = {"Inference-Header-Content-Length": str(len(header)),
                       "Content-Type": "application/octet-stream"}  # fmt: skip

            def over_http(client=http_clients[0], x=x, header=header, headers=headers) -> np.ndarray:
                r = client.post(f"/v2/models/{name}/infer", content=header + x.tobytes(), headers=headers)
                r.raise_for_status()
                length = int(r.headers["Inference-Header-Content-Length"])
                out = json.loads(r.content[:length])["outputs"][0]
                return np.frombuffer(r.content[length:], np.float32).reshape(out["shape"])

            ref = in_process()
            for label, fn in (("gRPC", over_grpc), ("HTTP", over_http)):
                got = fn()  # warm-up, and check they agree
                if not np.allclose(ref, got, atol=1e-3 * max(1.0, float(np.abs(ref).max()))):
                    raise SystemExit(f"{label} answer differs from the in-process session")
            for _ in range(2):
                in_process(), over_grpc(), over_http()

            def grpc_2() -> None:
                pipelined(lambda: stub.ModelInfer.future(grpc_request()).result, args.iters)

            def http_submit(fn=over_http):
                client = http_clients[next(turn) % 2]  # one connection per request in flight
                return pool.submit(fn, client).result

            def sequential(fn):
                return lambda: [fn() for _ in range(args.iters)]

            paths = {"in-process": sequential(in_process), "gRPC 1 in flight": sequential(over_grpc),
                     "gRPC 2 in flight": grpc_2, "HTTP 1 in flight": sequential(over_http),
                     "HTTP 2 in flight": lambda: pipelined(http_submit, args.iters)}  # fmt: skip
            rates: dict[str, list[float]] = {k: [] for k in paths}
            for _ in range(args.rounds):
                for label, run_round in paths.items():
                    start = time.perf_counter()
                    run_round()
                    rates[label].append(batch * args.iters / (time.perf_counter() - start))
            local = rates["in-process"]
            for label, values in rates.items():
                paired = statistics.median(v / loc for v, loc in zip(values, local, strict=True))
                rows.append((batch, label, statistics.median(values), paired, values))
        print(f"{'batch':>5}  {'path':<18} {'img/s':>9}  {'ratio':>6}  rounds")
        for batch, label, median, paired, values in rows:
            ratio = "" if label == "in-process" else f"{paired:6.3f}"
            print(
                f"{batch:>5}  {label:<18} {median:9.1f}  {ratio:>6}  {', '.join(f'{v:.1f}' for v in values)}"
            )
        print(
            "ratio = median over rounds of (path img/s / in-process img/s in the same round); goal >= 0.95 at batch 8"
        )
        for c in http_clients:
            c.close()
        pool.shutdown()
    finally:
        server.terminate()
        server.wait(timeout=20)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
