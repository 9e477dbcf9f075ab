"""Fleet scale: N simulated agents enrol, heartbeat and take a rollout of a 50 MB artifact.

The controller runs as its own process (``edgeloop controller serve``, SQLite by default or
``--db URL``). The agents are light: real gRPC clients (grpc.aio, one TCP connection each,
spread over ``--procs`` processes) without engines; they register with the enrollment token,
hold the control stream with heartbeats, and on a deploy command download every byte of the
artifact in chunks, send a measured report and a final status, like a real agent minus the
engine build and the sha256 of the bytes (the signature/sha path is measured by
artifact_transfer.py). Prints time to enrol, time to 100 % of the rollout, controller CPU and
the REST API's p50/p99 latency measured while the rollout runs.

``--bytes-from nginx`` puts nginx (Debian's, deploy/nginx/edgeloop-artifacts.conf) in front of the
controller's artifact dir and sets ``EDGELOOP_ARTIFACT_URL_BASE``/``_SECRET``: the deploy commands
carry signed URLs and the simulated agents fetch every byte from nginx over HTTP (a GET on a
plain asyncio stream, counted like the gRPC bytes; ``_http_get_count`` says why not httpx). ``--bytes-from grpc nginx``
runs both for each N, the gRPC path as the baseline of the same run.

``--controllers 2 --db postgres`` runs two controller processes on one PostgreSQL (a scratch
database made on $EDGELOOP_TEST_POSTGRES_URL's server or 127.0.0.1:5432 for each run, dropped
after) sharing one data dir, as docs/deploy.md deploys them; agent ``i`` dials controller
``i % K`` (what a list of addresses or a TCP load balancer does; haproxy itself is left out: at
two file descriptors per proxied connection, 10,000 agents exceed this machine's fd limit, and
tests/controller/test_load_balancer.py covers it). The REST probe asks the controllers in turn.
``--telemetry-s S`` starts a Mosquitto and has every device publish a metrics message every S
seconds (published by one MQTT connection per agent process: the ingest load, not 10,000 broker
sessions); the controllers subscribe to it.

The simulated agents speak plaintext gRPC (the controllers run with ``--insecure``): mutual TLS
would make the load generator, on the same two cores, pay 10,000 handshakes and CSRs per run,
which measures the simulation, not the controller. Its cost on a real agent is in the README
(TLS by default and its measured cost).

    .venv/bin/python benchmarks/fleet_scale.py --agents 100 1000
    .venv/bin/python benchmarks/fleet_scale.py --agents 1000 --bytes-from grpc nginx
    .venv/bin/python benchmarks/fleet_scale.py --agents 10000 --size-mb 1 --controllers 2 --db postgres \
        --telemetry-s 10 --heartbeat-s 10 --procs 4 --bytes-from grpc nginx
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import multiprocessing as mp
import os
import random
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _controller_proc import start_controller  # noqa: E402
from _nginx_proc import NGINX, start_nginx  # noqa: E402

TAG = "sim"
ROLLOUT_LIMIT_S = (
    1800.0  # a rollout still running then is measured and shown as "running" (--rollout-limit-s)
)
TAG_PREFIX = "edgeloop"  # the controllers' telemetry prefix (their default)
SECRET = "bench-secure-link-secret"
IDLE_S = 10.0  # seconds of connected, idle fleet measured before the rollout


def make_model(dest: Path, size_mb: int) -> tuple[Path, Path]:
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = (size_mb << 20) // 4
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal(n, dtype=np.float32), "w")
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", n])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n])
    graph = helper.make_graph(
        [helper.make_node("Add", ["input", "w"], ["logits"])], "big", [x], [y], initializer=[w]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx_path = dest / "model.onnx"
    onnx.save_model(model, str(onnx_path))
    manifest = dest / "manifest.json"
    manifest.write_text(
        json.dumps({"name": "scale", "version": "scale:1", "task": "classification"}), encoding="utf-8"
    )
    return onnx_path, manifest


# ---------------------------------------------------------------- simulated agents (child processes)
async def _agent(
    i: int, target: str, token: str, connected: asyncio.Event, stats: dict, devices: list[str]
) -> None:
    import grpc

    from protos import fleet_pb2, fleet_pb2_grpc

    channel = grpc.aio.insecure_channel(
        target,
        options=[("grpc.max_receive_message_length", 16 << 20), ("grpc.http2.max_frame_size", 4 << 20)],
    )
    stub = fleet_pb2_grpc.FleetServiceStub(channel)
    download = channel.unary_stream(
        "/edgeloop.fleet.v1.FleetService/DownloadArtifact",
        request_serializer=fleet_pb2.DownloadRequest.SerializeToString,
        response_deserializer=None,  # raw bytes: the simulated agent only counts them
    )
    hw = fleet_pb2.HardwareProfile(hostname=f"sim-{i}", hardware_class=f"sim-class-{i % 4}", arch="x86_64")
    for attempt in range(20):
        try:
            reg = await stub.Register(
                fleet_pb2.RegisterRequest(enrollment_token=token, name=f"sim-{i}", hardware=hw, tags=[TAG]),
                timeout=60,
            )
            break
        except grpc.aio.AioRpcError:
            await asyncio.sleep(0.2 * (attempt + 1))
    else:
        raise RuntimeError(f"sim-{i} could not register")
    devices.append(reg.device_id)  # for the telemetry publisher of this process
    md = (("authorization", f"Bearer {reg.device_token}"), ("x-edgeloop-device", reg.device_id))
    active = ""

    async def deploy(cmd: fleet_pb2.ControllerCommand, out: asyncio.Queue) -> None:
        nonlocal active
        ref = cmd.deploy.artifact
        await out.put(
            fleet_pb2.AgentMessage(
                status=fleet_pb2.CommandStatus(command_id=cmd.command_id, state="accepted")
            )
        )
        got, t0 = 0, time.perf_counter()
        if ref.url:  # bytes from nginx (a signed URL for this device)
            got = await _http_get_count(ref.url)
            stats["http_bytes"] += got
        else:
            async for raw in download(fleet_pb2.DownloadRequest(artifact_id=ref.artifact_id), metadata=md):
                got += len(raw)
        stats["bytes"] += got
        stats["download_s"].append(time.perf_counter() - t0)
        report = fleet_pb2.Report(
            model_version=ref.model_version,
            backend="onnxruntime",
            precision=cmd.deploy.precision or "fp32",
            accuracy={"top1": 0.8},
            command_id=cmd.command_id,
            scenarios=[fleet_pb2.ScenarioResult(scenario="offline", throughput_fps=100.0, valid=True)],
        )
        await stub.ReportResult(fleet_pb2.ResultReport(report=report), metadata=md, timeout=60)
        active = ref.model_version
        await out.put(
            fleet_pb2.AgentMessage(
                status=fleet_pb2.CommandStatus(
                    command_id=cmd.command_id, state="succeeded", kind="deploy", model_version=active
                )
            )
        )

    try:
        while True:  # like the real agent: a broken stream is opened again (backoff with jitter)
            out: asyncio.Queue = asyncio.Queue()
            await out.put(fleet_pb2.AgentMessage(hello=fleet_pb2.Hello(agent_version="sim")))

            async def outgoing(out: asyncio.Queue = out):
                while True:
                    try:
                        msg = await asyncio.wait_for(out.get(), timeout=reg.heartbeat_interval_s or 5)
                    except asyncio.TimeoutError:
                        msg = fleet_pb2.AgentMessage(
                            heartbeat=fleet_pb2.Heartbeat(timestamp=time.time(), active_version=active)
                        )
                    if msg is None:
                        return
                    yield msg

            call = stub.Connect(outgoing(), metadata=md)
            connected.set()
            try:
                async for cmd in call:
                    if cmd.WhichOneof("body") == "deploy":
                        await deploy(cmd, out)
                    else:
                        status = fleet_pb2.CommandStatus(command_id=cmd.command_id, state="succeeded")
                        await out.put(fleet_pb2.AgentMessage(status=status))
            except grpc.aio.AioRpcError:
                stats["reconnects"] += 1
            finally:
                await out.put(None)
                call.cancel()
            await asyncio.sleep(0.5 + random.random())
    except asyncio.CancelledError:
        pass
    finally:
        await channel.close()


async def _http_get_count(url: str) -> int:
    """GET ``url`` and count the body's bytes, in 1 MiB reads on a plain asyncio stream.

    The simulated agents' counterpart of their raw gRPC reads: the load generator must not be the
    limit on two vCPUs (httpx, what the real agent uses, parses in Python at ~1/3 of this rate
    here; the real agent's sha256 and disk writes cost more than either)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80, limit=1 << 20)
    try:
        writer.write(
            f"GET {parts.path}?{parts.query} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        if status != 200:
            raise RuntimeError(f"GET {parts.path}: HTTP {status}")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        got = 0
        while got < length and (data := await reader.read(1 << 20)):
            got += len(data)
        return got
    finally:
        writer.close()


async def _publish_telemetry(url: str, devices: list[str], every_s: float, stats: dict) -> None:
    """Each device of ``devices`` (filled as agents enrol) sends a metrics message every
    ``every_s`` seconds, spread evenly over the period, through one MQTT connection."""
    import paho.mqtt.client as mqtt

    parts = urlsplit(url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-telemetry-{uuid.uuid4().hex[:8]}")
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883)
    client.loop_start()
    try:
        while True:
            t0 = time.monotonic()
            batch = list(devices)
            for k, device in enumerate(batch):
                payload = {"device_id": device, "fps": 30.0 + k % 7, "cpu_percent": 20.0 + k % 50,
                           "latency_ms": {"p99": 12.0}, "memory_bytes": 200 << 20, "active_version": ""}  # fmt: skip
                client.publish(f"{TAG_PREFIX}/devices/{device}/metrics", json.dumps(payload), qos=0)
                stats["telemetry_sent"] += 1
                if k % 50 == 49:  # spread over the period
                    await asyncio.sleep(max(0.0, every_s * (k + 1) / len(batch) - (time.monotonic() - t0)))
            await asyncio.sleep(max(0.05, every_s - (time.monotonic() - t0)))
    finally:
        client.loop_stop()
        client.disconnect()


def _agents_proc(
    ids: list[int], targets: list[str], token: str, conn, telemetry: tuple[str, float] | None
) -> None:  # noqa: ANN001 - a Pipe end
    """Agents ``ids``, agent ``i`` on ``targets[i % len(targets)]``; ``telemetry``: (broker URL,
    seconds between two metrics messages of one device) or None."""

    async def main() -> None:
        stats = {"bytes": 0, "http_bytes": 0, "download_s": [], "telemetry_sent": 0, "reconnects": 0}
        devices: list[str] = []
        sem = asyncio.Semaphore(64)

        async def one(i: int) -> None:
            connected = asyncio.Event()
            target = targets[i % len(targets)]
            async with sem:  # at most 64 enrolments in flight per process
                task = asyncio.create_task(_agent(i, target, token, connected, stats, devices))
                waiter = asyncio.create_task(connected.wait())
                await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
            await task

        tasks = [asyncio.create_task(one(i)) for i in ids]
        if telemetry is not None:
            tasks.append(asyncio.create_task(_publish_telemetry(telemetry[0], devices, telemetry[1], stats)))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # the parent says stop
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        conn.send(stats)

    asyncio.run(main())


# ---------------------------------------------------------------- the run
def _probe(
    bases: list[str],
    headers: dict,
    stop: threading.Event,
    latencies: list[float],
    rollout_id: list[str],
    by_path: dict[str, list[float]],
) -> None:
    """Two REST reads every 0.1 s, each to the next controller of ``bases`` (a load balancer's
    round robin): a page of 50 devices, and the rollout with its counts and a page of 50 of
    its deployments (what an operator's screen shows; before 2026-12-03 evening the probe read
    the whole deployment list, 10,000 rows at 10,000 agents)."""
    clients = [httpx.Client(base_url=b, headers=headers, timeout=30) for b in bases]
    turn = itertools.cycle(clients)
    try:
        while not stop.is_set():
            for name, path in (
                ("devices page", "/devices/?limit=50"),
                ("rollout detail", f"/rollouts/{rollout_id[0]}?deployments_limit=50"),
            ):
                http = next(turn)
                t0 = time.perf_counter()
                try:
                    http.get(path).raise_for_status()
                except httpx.HTTPError as exc:  # counted and shown, not a dead probe
                    by_path.setdefault(f"{name} errors ({type(exc).__name__})", []).append(float("nan"))
                    continue
                ms = (time.perf_counter() - t0) * 1000
                latencies.append(ms)
                by_path.setdefault(name, []).append(ms)
            stop.wait(0.1)
    finally:
        for c in clients:
            c.close()


def _p99(values: list[float]) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(0.99 * len(v)))] if v else float("nan")


@contextmanager
def scratch_postgres() -> Iterator[str]:
    """A fresh database for one run on the PostgreSQL the tests use, dropped afterwards."""
    import sqlalchemy as sa

    server = os.environ.get(
        "EDGELOOP_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    name = f"edgeloop_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield f"{server.rpartition('/')[0]}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def _telemetry_ingested(ctls: list) -> float:  # noqa: ANN001 - ControllerProc
    """Metrics messages the controllers have taken in so far (their public /metrics)."""
    total = 0.0
    for ctl in ctls:
        text = httpx.get(f"http://127.0.0.1:{ctl.http_port}/metrics", timeout=10).text
        found = re.search(r'^edgeloop_telemetry_messages_total\{kind="metrics"\} (\S+)$', text, re.M)
        total += float(found.group(1)) if found else 0.0
    return total


def run_once(
    n: int,
    procs: int,
    size_mb: int,
    db_url: str | None,
    tmp: Path,
    source: str = "grpc",
    *,
    controllers: int = 1,
    telemetry_s: float = 0.0,
    heartbeat_s: int = 5,
) -> dict:
    run_dir = tmp / f"n{n}-{source}-c{controllers}"
    data = run_dir / "data"
    data.mkdir(parents=True)
    nginx, extra_env = None, {"EDGELOOP_HEARTBEAT_INTERVAL_S": str(heartbeat_s)}
    if controllers > 1:  # the telemetry split between them (MQTT shared subscription), not taken twice
        extra_env["EDGELOOP_TELEMETRY_SHARE_GROUP"] = "bench-controllers"
    if source == "nginx":
        nginx = start_nginx(run_dir / "nginx", data, SECRET, worker_connections=max(1024, 2 * n))
        extra_env |= {"EDGELOOP_ARTIFACT_URL_BASE": nginx.base_url, "EDGELOOP_ARTIFACT_URL_SECRET": SECRET}
    broker = None
    if telemetry_s:
        from controller.broker import start_local_broker

        broker = start_local_broker("mosquitto")  # anonymous on loopback, like the --insecure fleet
    ctls: list = []
    try:
        for k in range(controllers):  # one after the other: the first makes the keys
            ctls.append(
                start_controller(
                    data,
                    db_url,
                    extra_env=extra_env | {"EDGELOOP_MQTT_CLIENT_ID": f"bench-ctl-{k + 1}"},
                    name=f"controller-{k + 1}",
                    mqtt_url=broker.url if broker else None,
                )  # fmt: skip
            )
        return _measure(n, procs, size_mb, run_dir, source, ctls, nginx, broker, telemetry_s)
    finally:
        for ctl in ctls:
            ctl.stop()
        if nginx is not None:
            nginx.stop()
        if broker is not None:
            broker.stop()


def _measure(n, procs, size_mb, run_dir, source, ctls, nginx, broker, telemetry_s) -> dict:  # noqa: ANN001
    ctl = ctls[0]
    cprocs = [psutil.Process(c.proc.pid) for c in ctls]
    model_dir = run_dir / "model"
    model_dir.mkdir()
    onnx_path, manifest = make_model(model_dir, size_mb)
    with ctl.http as http, open(onnx_path, "rb") as o, open(manifest, "rb") as m:
        http.post("/models/import", files={"onnx": o, "manifest": m}).raise_for_status()
    ctx = mp.get_context("spawn")
    pipes, children = [], []
    t_enrol = time.perf_counter()
    telemetry = (broker.url, telemetry_s) if broker is not None else None
    targets = [c.grpc_target for c in ctls]
    for p in range(procs):
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_agents_proc,
            args=(list(range(p, n, procs)), targets, ctl.enrollment_token, child, telemetry),
            daemon=True,  # an interrupted run leaves no agent process behind
        )
        proc.start()
        pipes.append(parent)
        children.append(proc)
    try:
        return _rollout(n, ctls, cprocs, nginx, telemetry, pipes, children, t_enrol, source)
    finally:
        for proc in children:
            if proc.is_alive():
                proc.terminate()


def _rollout(n, ctls, cprocs, nginx, telemetry, pipes, children, t_enrol, source) -> dict:  # noqa: ANN001
    ctl = ctls[0]
    with ctl.http as http:
        while True:
            online = http.get("/devices/", params={"online": "true", "limit": 1}).json()["count"]
            if online >= n:
                break
            if time.perf_counter() - t_enrol > 900:
                raise TimeoutError(f"only {online}/{n} agents connected")
            time.sleep(0.5)
    enrol_s = time.perf_counter() - t_enrol
    time.sleep(1.0)  # a heartbeat round with everyone connected
    idle0, t_idle = [c.cpu_times() for c in cprocs], time.perf_counter()
    time.sleep(IDLE_S)  # the fleet's standing cost: heartbeats (and telemetry), no rollout, no probe
    idle_s = time.perf_counter() - t_idle
    idle_cpu_s = sum(
        (b.user - a.user) + (b.system - a.system)
        for a, b in zip(idle0, [c.cpu_times() for c in cprocs], strict=True)
    )
    latencies: list[float] = []
    by_path: dict[str, list[float]] = {}
    stop = threading.Event()
    rid: list[str] = []
    profilers = _start_py_spy(cprocs)
    cpu0 = [c.cpu_times() for c in cprocs]
    agents_cpu0 = _cpu_s([p.pid for p in children])
    nginx0 = _nginx_cpu_s(nginx)
    ingested0 = _telemetry_ingested(ctls) if telemetry else 0.0
    t0 = time.perf_counter()
    with ctl.http as http:
        r = http.post(
            "/rollouts/",
            json={
                "model_version": "scale:1",
                "selector": {"tags": [TAG]},
                "strategy": {
                    "canary_share": 0.01,
                    "waves": 4,
                    "max_failure_share": 0.0,
                    "max_accuracy_drop": 1.0,
                    "min_fps_ratio": 0.9,
                    "deploy_timeout_s": 600,
                },
            },
        )
        r.raise_for_status()
        rid.append(r.json()["id"])
        bases = [f"http://127.0.0.1:{c.http_port}/api/v1" for c in ctls]
        prober = threading.Thread(
            target=_probe, args=(bases, dict(http.headers), stop, latencies, rid, by_path), daemon=True
        )
        prober.start()
        while True:
            state = http.get(f"/rollouts/{rid[0]}", params={"deployments": "false"}).json()
            if state["state"] != "running":
                break
            if time.perf_counter() - t0 > ROLLOUT_LIMIT_S:  # reported as still running, with its figures
                break
            time.sleep(0.5)  # the harness's own poll: time to 100 % is known to 0.5 s
    rollout_s = time.perf_counter() - t0
    cpu1 = [c.cpu_times() for c in cprocs]
    _stop_py_spy(profilers)
    agents_cpu_s = _cpu_s([p.pid for p in children]) - agents_cpu0
    nginx_cpu_s = _nginx_cpu_s(nginx) - nginx0
    ingested = (_telemetry_ingested(ctls) - ingested0) if telemetry else 0.0
    stop.set()
    prober.join()
    stats = []
    for pipe in pipes:
        pipe.send("stop")
    for pipe, proc in zip(pipes, children, strict=True):
        empty = {"bytes": 0, "http_bytes": 0, "download_s": [], "telemetry_sent": 0, "reconnects": 0}
        stats.append(pipe.recv() if pipe.poll(60) else empty)
        proc.join(timeout=30)
    cpu_each = [(b.user - a.user) + (b.system - a.system) for a, b in zip(cpu0, cpu1, strict=True)]
    cpu_s = sum(cpu_each)
    downloads = [d for s in stats for d in s["download_s"]]
    lat = sorted(latencies)
    return {
        "agents": n,
        "source": source,
        "controllers": len(ctls),
        "http_bytes": sum(s["http_bytes"] for s in stats),
        "state": state["state"],
        "counts": state["counts"],
        "enrol_s": enrol_s,
        "rollout_s": rollout_s,
        "bytes": sum(s["bytes"] for s in stats),
        "controller_cpu_s": cpu_s,
        "controller_cpu_pct": 100 * cpu_s / rollout_s,
        "controller_idle_cpu_pct": 100 * idle_cpu_s / idle_s,
        "controller_cpu_pct_each": [100 * c / rollout_s for c in cpu_each],
        "nginx_cpu_s": nginx_cpu_s,
        "agents_cpu_s": agents_cpu_s,
        "telemetry_sent": sum(s["telemetry_sent"] for s in stats),
        "reconnects": sum(s["reconnects"] for s in stats),
        "telemetry_per_s": ingested / rollout_s if telemetry else 0.0,
        "telemetry_ingested": ingested,
        "api_p50_ms": statistics.median(lat) if lat else float("nan"),
        "api_p99_ms": _p99(lat),
        "api_by_path": {k: (statistics.median(v), _p99(v), len(v)) for k, v in by_path.items()},
        "api_requests": len(lat),
        "download_p50_s": statistics.median(downloads) if downloads else float("nan"),
    }


def main() -> int:
    global ROLLOUT_LIMIT_S
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, nargs="+", default=[100, 1000])
    ap.add_argument("--procs", type=int, default=2, help="processes the simulated agents are spread over")
    ap.add_argument("--size-mb", type=int, default=50)
    ap.add_argument("--db", default=None,
                    help="controller DB URL (default: SQLite in a temp dir); 'postgres': a scratch database per run")  # fmt: skip
    ap.add_argument("--controllers", type=int, default=1, help="controller processes on the one database")
    ap.add_argument("--telemetry-s", type=float, default=0.0,
                    help="every device publishes a metrics message this often (0: no telemetry, no broker)")  # fmt: skip
    ap.add_argument(
        "--heartbeat-s", type=int, default=5, help="the agents' heartbeat interval (controller setting)"
    )
    ap.add_argument("--rollout-limit-s", type=float, default=ROLLOUT_LIMIT_S,
                    help="stop waiting then and print the figures of a rollout still running (partial counts)")  # fmt: skip
    ap.add_argument("--bytes-from", nargs="+", choices=["grpc", "nginx"], default=["grpc"],
                    help="where agents fetch the artifact: the controller's gRPC, or nginx by signed URL")  # fmt: skip
    args = ap.parse_args()
    if "nginx" in args.bytes_from and NGINX is None:
        ap.error("--bytes-from nginx needs nginx (apt-get install nginx)")
    if args.controllers > 1 and (args.db is None or args.db.startswith("sqlite")):
        ap.error("--controllers > 1 needs PostgreSQL (--db postgres or a URL): SQLite is one process's")
    ROLLOUT_LIMIT_S = args.rollout_limit_s
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeloop-scale-") as tmp:
        for n in args.agents:
            for source in args.bytes_from:
                kw = {
                    "controllers": args.controllers,
                    "telemetry_s": args.telemetry_s,
                    "heartbeat_s": args.heartbeat_s,
                }
                if args.db == "postgres":
                    with scratch_postgres() as url:
                        row = run_once(n, args.procs, args.size_mb, url, Path(tmp), source, **kw)
                else:
                    row = run_once(n, args.procs, args.size_mb, args.db, Path(tmp), source, **kw)
                rows.append(row)
                _print_row(row)
    print(
        f"machine: {psutil.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB; artifact {args.size_mb} MB; "
        f"{args.procs} agent processes; {args.controllers} controller(s) on {args.db or 'SQLite'}; heartbeat every "
        f"{args.heartbeat_s} s; telemetry {f'every {args.telemetry_s:g} s per device' if args.telemetry_s else 'off'}; "
        f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}\n"
        "goals (issue 17): 1000 agents, 50 MB from nginx: 100 % < 60 s, controller < 25 % of one core, API p99 < 100 ms; "
        "10,000 agents, 1 MB, two controllers on PostgreSQL: rollout < 120 s, API p99 < 200 ms"
    )
    return 0


PY_SPY_DIR = os.environ.get("EDGELOOP_BENCH_PY_SPY_DIR", "")


def _start_py_spy(cprocs: list) -> list:  # noqa: ANN001 - psutil.Process
    """With ``$EDGELOOP_BENCH_PY_SPY_DIR`` set, a ``py-spy record`` (raw folded stacks) of each
    controller for the rollout alone (not the enrolment); none otherwise. ``--gil``: only the
    thread holding the GIL is sampled, so the stacks say where the Python CPU goes (not where
    threads wait); ``--nonblocking``: the controller is not paused to be sampled."""
    if not PY_SPY_DIR:
        return []
    import subprocess

    Path(PY_SPY_DIR).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                "py-spy",
                "record",
                "--pid",
                str(c.pid),
                "--rate",
                "50",
                "--format",
                "raw",
                "--threads",
                "--gil",
                "--nonblocking",
                "-o",
                str(Path(PY_SPY_DIR) / f"controller-{k + 1}.txt"),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for k, c in enumerate(cprocs)
    ]


def _stop_py_spy(profilers: list) -> None:  # noqa: ANN001 - subprocess.Popen
    import signal

    for p in profilers:
        p.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for p in profilers:
        p.wait(timeout=60)


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds the processes ``pids`` have used so far (those still running)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _nginx_cpu_s(nginx) -> float:  # noqa: ANN001 - _nginx_proc.Nginx or None
    """CPU seconds of nginx's master and workers so far (0 without nginx)."""
    if nginx is None:
        return 0.0
    master = psutil.Process(nginx.proc.pid)
    total = 0.0
    for p in (master, *master.children()):
        t = p.cpu_times()
        total += t.user + t.system
    return total


def _print_row(row: dict) -> None:
    paths = ", ".join(
        f"{k}: {n}" if k.endswith(")") else f"{k} p50 {a:.0f} / p99 {b:.0f} ms"
        for k, (a, b, n) in row["api_by_path"].items()
    )
    nginx = f"nginx CPU {row['nginx_cpu_s']:.1f} s  " if row["source"] == "nginx" else ""
    nginx += f"simulated agents CPU {row['agents_cpu_s']:.1f} s  "
    each = " + ".join(f"{p:.0f}" for p in row["controller_cpu_pct_each"])
    telemetry = (
        f"telemetry {row['telemetry_per_s']:.0f} msg/s taken in ({row['telemetry_ingested']:.0f} during the rollout, "
        f"{row['telemetry_sent']} sent in all)  "
        if row["telemetry_sent"]
        else ""
    )
    print(
        f"N={row['agents']:5d} controllers={row['controllers']} bytes from {row['source']:5s}  "
        f"rollout {row['state']} {row['counts']}  agent streams reopened {row['reconnects']}  "
        f"enrol+connect {row['enrol_s']:.1f} s  time to 100% {row['rollout_s']:.1f} s  "
        f"data {row['bytes'] / 1e9:.1f} GB ({row['http_bytes'] / 1e9:.1f} GB over HTTP)  "
        f"controller CPU {row['controller_cpu_s']:.1f} s ({row['controller_cpu_pct']:.0f}% of one core: {each}; "
        f"{row['controller_idle_cpu_pct']:.0f}% with the fleet connected and no rollout)  {nginx}{telemetry}"
        f"API p50 {row['api_p50_ms']:.1f} ms p99 {row['api_p99_ms']:.1f} ms ({row['api_requests']} requests: {paths})",
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
