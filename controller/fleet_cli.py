"""``edgeloop fleet``: a terminal client of the controller's REST API, with readable tables.

    edgeloop fleet devices [--tag T] [--class C] [--online]
    edgeloop fleet models
    edgeloop fleet import model.onnx manifest.json
    edgeloop fleet rollouts | rollout ID | rollout-create VERSION --class C --canary 0.1 --waves 2
    edgeloop fleet pause|resume|abort|rollback ID
    edgeloop fleet results [--matrix] [--version V]
    edgeloop fleet revoke DEVICE_ID

    edgeloop fleet benchmark DEVICE_ID VERSION [--precision fp32 --precision int8]
    edgeloop fleet jobs

The URL comes from ``--url`` (default ``http://127.0.0.1:$EDGELOOP_HTTP_PORT``, port 8000); the
token from ``--token``, else EDGELOOP_API_TOKEN, else ``<data-dir>/api_token`` of a local
controller (``--data-dir`` or EDGELOOP_DATA_DIR).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import httpx


def _table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    if not rows:
        return "(none)"
    cells = [[_fmt(r.get(key)) for key, _ in columns] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
    line = "  ".join(h.ljust(w) for (_, h), w in zip(columns, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(out)


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.2f}"
    if isinstance(v, list):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return " ".join(f"{k}={val}" for k, val in v.items())
    return str(v)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=None, help="controller REST URL (default http://127.0.0.1:8000)")
    parser.add_argument("--token", default=None, help="API token (default $EDGELOOP_API_TOKEN)")
    parser.add_argument("--data-dir", default=None, help="read the token from a local controller's data dir")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    sub = parser.add_subparsers(dest="fleet_command", metavar="ACTION", required=True)
    p = sub.add_parser("devices", help="list devices")
    p.add_argument("--tag")
    p.add_argument("--class", dest="hardware_class")
    p.add_argument("--online", action="store_true")
    sub.add_parser("models", help="list model versions")
    p = sub.add_parser("import", help="import an ONNX model with its manifest")
    p.add_argument("onnx")
    p.add_argument("manifest")
    sub.add_parser("rollouts", help="list rollouts")
    p = sub.add_parser("rollout", help="show one rollout with its devices")
    p.add_argument("rollout_id")
    p = sub.add_parser("rollout-create", help="start a rollout")
    p.add_argument("model_version")
    p.add_argument("--tag", action="append", default=[])
    p.add_argument("--class", dest="hardware_classes", action="append", default=[])
    p.add_argument("--device", dest="device_ids", action="append", default=[])
    p.add_argument("--canary", type=float, default=0.1)
    p.add_argument("--waves", type=int, default=2)
    p.add_argument("--max-failure", type=float, default=0.0)
    p.add_argument("--max-accuracy-drop", type=float, default=1.0)
    p.add_argument("--min-fps-ratio", type=float, default=0.9)
    p.add_argument("--backend", default="")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--evaluation", help="evaluation shard artifact id")
    p.add_argument("--preferred-batch-sizes", default="",
                   help="dynamic batching on the devices: comma-separated sizes (default: the agents' settings)")  # fmt: skip
    p.add_argument("--max-queue-delay-us", type=int, default=0,
                   help="dynamic batching: longest wait to merge requests, microseconds")  # fmt: skip
    for action in ("pause", "resume", "abort", "rollback"):
        sub.add_parser(action, help=f"{action} a rollout").add_argument("rollout_id")
    p = sub.add_parser("results", help="measured results")
    p.add_argument("--matrix", action="store_true", help="class x version x backend x precision")
    p.add_argument("--version")
    p.add_argument("--class", dest="hardware_class")
    sub.add_parser("revoke", help="revoke a device").add_argument("device_id")
    p = sub.add_parser("benchmark", help="ask a device to measure a model version")
    p.add_argument("device_id")
    p.add_argument("model_version")
    p.add_argument("--backend", action="append", default=[])
    p.add_argument("--precision", action="append", default=[])
    p.add_argument("--round", default="")
    sub.add_parser("jobs", help="trainer jobs")


def _client(args: argparse.Namespace) -> httpx.Client:
    url = args.url or f"http://127.0.0.1:{os.environ.get('EDGELOOP_HTTP_PORT') or 8000}"
    token = args.token or os.environ.get("EDGELOOP_API_TOKEN")
    if not token:
        data_dir = Path(
            args.data_dir or os.environ.get("EDGELOOP_DATA_DIR") or Path.home() / ".edgeloop" / "controller"
        )
        token_file = data_dir / "api_token"
        token = token_file.read_text(encoding="utf-8").strip() if token_file.exists() else ""
    return httpx.Client(
        base_url=url.rstrip("/") + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


DEVICE_COLS = [
    ("id", "device"),
    ("name", "name"),
    ("hardware_class", "class"),
    ("online", "online"),
    ("active_version", "active model"),
    ("agent_version", "agent"),
    ("tags", "tags"),
    ("revoked", "revoked"),
]
MODEL_COLS = [
    ("version", "version"),
    ("name", "name"),
    ("task", "task"),
    ("parent_version", "parent"),
    ("precision", "precision"),
    ("source", "source"),
    ("size_bytes", "bytes"),
    ("metrics", "metrics at export"),
]
ROLLOUT_COLS = [
    ("id", "rollout"),
    ("model_version", "model"),
    ("state", "state"),
    ("current_wave", "wave"),
    ("counts", "deployments"),
    ("reason", "reason"),
]
DEPLOY_COLS = [
    ("device_id", "device"),
    ("wave", "wave"),
    ("state", "state"),
    ("previous_version", "replaces"),
    ("accuracy", "acc"),
    ("baseline_accuracy", "acc was"),
    ("fps", "fps"),
    ("baseline_fps", "fps was"),
    ("message", "message"),
]
RESULT_COLS = [
    ("hardware_class", "class"),
    ("device_id", "device"),
    ("model_version", "model"),
    ("backend", "backend"),
    ("precision", "precision"),
    ("accuracy", "acc %"),
    ("fps", "fps"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
]
MATRIX_COLS = [
    ("hardware_class", "class"),
    ("model_version", "model"),
    ("backend", "backend"),
    ("precision", "precision"),
    ("accuracy", "acc %"),
    ("fps", "fps"),
    ("latency_p50_ms", "p50 ms"),
    ("latency_p99_ms", "p99 ms"),
    ("devices", "devices"),
    ("reports", "reports"),
]

COMMAND_COLS = [("id", "command"), ("device_id", "device"), ("kind", "kind"), ("model_version", "model"),
                ("state", "state"), ("message", "message")]  # fmt: skip
JOB_COLS = [("id", "job"), ("task", "task"), ("action", "action"), ("state", "state"),
            ("created_at", "created"), ("error", "error")]  # fmt: skip


def run(args: argparse.Namespace) -> int:
    logging.getLogger("httpx").setLevel(logging.WARNING)  # tables on stdout, not request logs
    cmd = args.fleet_command
    with _client(args) as http:
        try:
            if cmd == "devices":
                params = {
                    k: v for k, v in {"tag": args.tag, "hardware_class": args.hardware_class}.items() if v
                }
                if args.online:
                    params["online"] = "true"
                data, cols = _get(http, "/devices/", params)["data"], DEVICE_COLS
            elif cmd == "models":
                data, cols = _get(http, "/models")["data"], MODEL_COLS
            elif cmd == "import":
                with open(args.onnx, "rb") as onnx, open(args.manifest, "rb") as manifest:
                    data = _check(http.post("/models/import", files={"onnx": onnx, "manifest": manifest}))
                data, cols = [data], MODEL_COLS
            elif cmd == "rollouts":
                data, cols = _get(http, "/rollouts/")["data"], ROLLOUT_COLS
            elif cmd == "rollout":
                r = _get(http, f"/rollouts/{args.rollout_id}")
                if args.json:
                    print(json.dumps(r, indent=2))
                    return 0
                print(_table([r], ROLLOUT_COLS) + "\n")
                data, cols = r["deployments"], DEPLOY_COLS
            elif cmd == "rollout-create":
                body = {
                    "model_version": args.model_version,
                    "backend": args.backend,
                    "precision": args.precision,
                    "selector": {
                        "tags": args.tag,
                        "hardware_classes": args.hardware_classes,
                        "device_ids": args.device_ids,
                    },
                    "strategy": {
                        "canary_share": args.canary,
                        "waves": args.waves,
                        "max_failure_share": args.max_failure,
                        "max_accuracy_drop": args.max_accuracy_drop,
                        "min_fps_ratio": args.min_fps_ratio,
                        "preferred_batch_sizes": [
                            int(b) for b in args.preferred_batch_sizes.split(",") if b.strip()
                        ],
                        "max_queue_delay_us": args.max_queue_delay_us,
                    },
                    "evaluation_artifact_id": args.evaluation,
                }
                data, cols = [_check(http.post("/rollouts/", json=body))], ROLLOUT_COLS
            elif cmd in ("pause", "resume", "abort", "rollback"):
                data, cols = [_check(http.post(f"/rollouts/{args.rollout_id}/{cmd}"))], ROLLOUT_COLS
            elif cmd == "results":
                params = {
                    k: v
                    for k, v in {"model_version": args.version, "hardware_class": args.hardware_class}.items()
                    if v
                }
                if args.matrix:
                    data, cols = _get(http, "/results/matrix", params)["cells"], MATRIX_COLS
                else:
                    data, cols = _get(http, "/results/", params)["data"], RESULT_COLS
            elif cmd == "benchmark":
                body = {"model_version": args.model_version, "backends": args.backend,
                        "precisions": args.precision or ["fp32"], "round_id": args.round}  # fmt: skip
                data, cols = (
                    [_check(http.post(f"/devices/{args.device_id}/benchmark", json=body))],
                    COMMAND_COLS,
                )
            elif cmd == "jobs":
                data, cols = _get(http, "/jobs/")["data"], JOB_COLS
            elif cmd == "revoke":
                data, cols = [_check(http.post(f"/devices/{args.device_id}/revoke"))], DEVICE_COLS
            else:  # argparse refuses unknown actions first
                raise SystemExit(f"unknown action {cmd}")
        except ApiError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        except httpx.HTTPError as exc:
            print(f"error: cannot reach the controller at {http.base_url}: {exc}", file=sys.stderr)
            return 1
    print(json.dumps(data, indent=2) if args.json else _table(data, cols))
    return 0


class ApiError(Exception):
    pass


def _check(resp: httpx.Response) -> dict:
    if resp.status_code >= 400:
        try:
            detail = resp.json().get("detail")
        except ValueError:
            detail = resp.text
        raise ApiError(f"{resp.status_code} {json.dumps(detail) if not isinstance(detail, str) else detail}")
    return resp.json()


def _get(http: httpx.Client, path: str, params: dict | None = None) -> dict:
    return _check(http.get(path, params=params))
