"""Artifact download throughput against a raw TCP loopback copy of the same bytes, in one run.

A controller runs as its own process (``edgeloop controller serve``); this process is the agent
and fetches the artifact two ways: with ``agent.fleet.download.download_artifact`` (gRPC chunks
from the controller) and with ``agent.fleet.http_fetch.fetch_url`` from nginx (Debian's, with
deploy/nginx/edgeloop-artifacts.conf, serving the controller's artifact dir behind a
``secure_link`` URL signed the way the controller signs it). Both check the ed25519 signature,
hash every byte and write it to disk. The baseline sends the same file over a plain TCP socket
from another process and writes it to disk on this side, without any checks. All run in
alternating rounds and the medians are compared (the CI VM is shared and noisy). Without nginx
the HTTP path is skipped with the reason. The gRPC download runs twice per round: from a
controller started with ``--insecure`` (plaintext) and from one with TLS (the default: mutual TLS
with the controller's CA), so the cost of TLS is measured in the same run (goal: at most 10 %).

    .venv/bin/python benchmarks/artifact_transfer.py --size-mb 256
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _controller_proc import start_controller  # noqa: E402
from _nginx_proc import NGINX, start_nginx  # noqa: E402

from agent.fleet.client import AgentIdentity, FleetClient  # noqa: E402
from agent.fleet.download import download_artifact  # noqa: E402
from agent.fleet.http_fetch import UrlFetcher, fetch_url  # noqa: E402
from agent.probe import probe_hardware  # noqa: E402
from controller.broker import free_port  # noqa: E402
from controller.services.storage import LocalStore  # noqa: E402
from protos import fleet_pb2  # noqa: E402

SECRET = "bench-secure-link-secret"
RAW_SENDER = r"""
import socket, sys
path, port = sys.argv[1], int(sys.argv[2])
srv = socket.create_server(("127.0.0.1", port))
print("ready", flush=True)
conn, _ = srv.accept()
with open(path, "rb") as fh:
    while block := fh.read(1 << 20):
        conn.sendall(block)
conn.close()
"""


def make_shard(path: Path, size: int) -> Path:
    payload = os.urandom(size)
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("blob.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return path


def send_shard_to(http, device_id: str, shard_id: str, tmp: Path) -> None:  # noqa: ANN001 - httpx.Client
    """The controller lets a device download only artifacts a command sent it: store a benchmark
    command for this device that names the shard (this agent holds no stream: it never runs)."""
    import json

    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["input"], ["logits"])], "tiny", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save_model(model, str(tmp / "tiny.onnx"))
    manifest = json.dumps({"name": "tiny", "version": "xfer:1", "task": "classification"})
    with open(tmp / "tiny.onnx", "rb") as fh:
        files = {"onnx": ("model.onnx", fh), "manifest": ("manifest.json", manifest)}
        http.post("/models/import", files=files).raise_for_status()
    body = {"model_version": "xfer:1", "evaluation_artifact_id": shard_id}
    http.post(f"/devices/{device_id}/benchmark", json=body).raise_for_status()


def raw_tcp_copy(path: Path, dest: Path) -> float:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-c", RAW_SENDER, str(path), str(port)], stdout=subprocess.PIPE, text=True
    )
    proc.stdout.readline()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as s, open(dest, "wb") as out:
        while n := s.recv_into(buf):
            out.write(view[:n])
        out.flush()
        os.fsync(out.fileno())
    elapsed = time.perf_counter() - t0
    proc.wait()
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--chunk-kb", type=int, default=0, help="gRPC chunk size (0 = controller default, 4 MiB)")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds of each; medians are compared")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgeloop-xfer-") as tmp:
        tmp = Path(tmp)
        shard = make_shard(tmp / "shard.tar", args.size_mb << 20)
        size = shard.stat().st_size
        (tmp / "ctl").mkdir()
        ctl = start_controller(tmp / "ctl" / "data")  # --insecure (the helper's default)
        (tmp / "tls").mkdir()
        tls_ctl = start_controller(tmp / "tls" / "data", extra_env={"EDGELOOP_INSECURE": "false"})
        nginx = start_nginx(tmp / "nginx", tmp / "ctl" / "data", SECRET) if NGINX else None
        http_times: list[float] = []
        try:
            with ctl.http as http, open(shard, "rb") as fh:
                art = http.post("/artifacts/shards", files={"file": ("shard.tar", fh)}).json()
            identity = AgentIdentity("bench", probe_hardware(hardware_class="bench"))
            client = FleetClient(
                ctl.grpc_target, tmp / "agent", identity, ctl.enrollment_token, insecure=True
            )
            creds = client.register()
            with ctl.http as http:
                send_shard_to(http, creds.device_id, art["id"], tmp)
            with tls_ctl.http as http, open(shard, "rb") as fh:
                tls_art = http.post("/artifacts/shards", files={"file": ("shard.tar", fh)}).json()
            tls_client = FleetClient(
                tls_ctl.grpc_target, tmp / "agent-tls", identity, tls_ctl.enrollment_token,
                ca_pem=(tmp / "tls" / "data" / "keys" / "ca_cert.pem").read_bytes(),
                enroll_target=f"127.0.0.1:{tls_ctl.grpc_port + 1}",
            )  # fmt: skip
            tls_creds = tls_client.register()
            with tls_ctl.http as http:
                send_shard_to(http, tls_creds.device_id, tls_art["id"], tmp)
            tls_ref = fleet_pb2.ArtifactRef(
                artifact_id=tls_art["id"], sha256=tls_art["sha256"], size_bytes=tls_art["size_bytes"],
                signature=bytes.fromhex(tls_art["signature"]), kind="shard",
            )  # fmt: skip
            ref = fleet_pb2.ArtifactRef(
                artifact_id=art["id"],
                sha256=art["sha256"],
                size_bytes=art["size_bytes"],
                signature=bytes.fromhex(art["signature"]),
                kind="shard",
            )
            http_ref = fleet_pb2.ArtifactRef()
            http_ref.CopyFrom(ref)
            if nginx is not None:
                store = LocalStore(tmp / "ctl" / "data" / "artifacts", base_url=nginx.base_url, secret=SECRET)
                http_ref.url = store.url(f"{ref.sha256}.tar", device_id=creds.device_id,
                                         expires_at=int(time.time()) + 3600)  # fmt: skip
            fetcher = UrlFetcher()
            shard.read_bytes()  # the file is in the page cache for both senders
            raw_times, grpc_times, tls_times = [], [], []
            for r in range(args.rounds):  # alternate, so background load hits both alike
                raw_times.append(raw_tcp_copy(shard, tmp / "raw.bin"))
                (tmp / "raw.bin").unlink()
                t0 = time.perf_counter()
                result = download_artifact(client.stub, ref, tmp / f"dl{r}", creds.public_key,
                                           metadata=client.metadata, chunk_size=args.chunk_kb << 10)  # fmt: skip
                grpc_times.append(time.perf_counter() - t0)
                assert result.path.stat().st_size == size and not result.cached
                result.path.unlink()
                t0 = time.perf_counter()
                result = download_artifact(tls_client.stub, tls_ref, tmp / f"tls{r}", tls_creds.public_key,
                                           metadata=tls_client.metadata, chunk_size=args.chunk_kb << 10)  # fmt: skip
                tls_times.append(time.perf_counter() - t0)
                assert result.path.stat().st_size == size and not result.cached
                result.path.unlink()
                if nginx is not None:
                    t0 = time.perf_counter()
                    result = fetch_url(fetcher.client, http_ref, tmp / f"http{r}", creds.public_key)
                    http_times.append(time.perf_counter() - t0)
                    assert (
                        result.path.stat().st_size == size and not result.cached and result.resumed_from == 0
                    )
                    result.path.unlink()
            fetcher.close()
            client.close()
            tls_client.close()
        finally:
            if nginx is not None:
                nginx.stop()
            ctl.stop()
            tls_ctl.stop()
    mb = size / 1e6
    raw_s, grpc_s = statistics.median(raw_times), statistics.median(grpc_times)
    raw_tp, grpc_tp = mb / raw_s, mb / grpc_s
    print(
        f"artifact: {mb:.0f} MB on loopback, {os.cpu_count()} CPUs, median of {args.rounds} alternating rounds"
    )
    print(f"raw TCP copy to disk (no checks)        : {raw_s:6.3f} s  {raw_tp:8.1f} MB/s")
    print(
        f"gRPC download to disk (sha256, ed25519) : {grpc_s:6.3f} s  {grpc_tp:8.1f} MB/s"
        f"  (first, chunks not yet cached: {mb / grpc_times[0]:.1f} MB/s)"
    )
    print(f"ratio gRPC / raw TCP                    : {grpc_tp / raw_tp:.2f}")
    tls_s = statistics.median(tls_times)
    print(f"gRPC over mutual TLS (the default)      : {tls_s:6.3f} s  {mb / tls_s:8.1f} MB/s")
    print(f"TLS cost (time TLS / plaintext - 1)     : {100 * (tls_s / grpc_s - 1):+.1f} %  (goal <= +10 %)")
    if http_times:
        http_s = statistics.median(http_times)
        http_tp = mb / http_s
        print(f"HTTP from nginx to disk (sha256, ed25519): {http_s:6.3f} s  {http_tp:8.1f} MB/s")
        print(f"ratio HTTP / raw TCP                    : {http_tp / raw_tp:.2f}  (goal >= 0.80)")
    else:
        print("HTTP path skipped: nginx not installed (apt-get install nginx)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
