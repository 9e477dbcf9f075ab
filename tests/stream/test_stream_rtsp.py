"""A real RTSP camera on loopback (GStreamer's RTSP server, ``scripts/rtsp_test_server.py``),
killed with SIGKILL mid-stream and started again on the same port: the source reconnects with
backoff, counts it, and its frame numbers keep counting. Skipped, with the reason, where the
GStreamer RTSP server is not installed (scripts/test.sh installs it on Debian)."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest
from stream_testkit import read_jsonl

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PYTHON = "/usr/bin/python3"


def _gst_rtsp_available() -> str:
    try:
        probe = subprocess.run([SYSTEM_PYTHON, "-c", "import gi; gi.require_version('GstRtspServer', '1.0'); "
                                "from gi.repository import GstRtspServer"], capture_output=True, timeout=30)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"no system python with PyGObject ({exc})"
    return "" if probe.returncode == 0 else "GStreamer RTSP server (gir1.2-gst-rtsp-server-1.0) not installed"


MISSING = _gst_rtsp_available()
pytestmark = pytest.mark.skipif(bool(MISSING), reason=MISSING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(port: int, log: Path) -> subprocess.Popen:
    proc = subprocess.Popen([SYSTEM_PYTHON, str(ROOT / "scripts" / "rtsp_test_server.py"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=log.open("ab"), text=True)  # fmt: skip
    line = proc.stdout.readline()
    assert line.startswith("READY"), f"RTSP server did not start: {line!r}, see {log}"
    return proc


def _wait_for(predicate, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_camera_killed_and_restarted_is_reconnected_and_counted(make_pipeline, detector, tmp_path) -> None:
    port = _free_port()
    log = tmp_path / "rtsp.log"
    server = _start_server(port, log)
    out = tmp_path / "events.jsonl"
    try:
        p = make_pipeline("sources.0.id=door", f"sources.0.uri=rtsp://127.0.0.1:{port}/cam",
                          "sources.0.reconnect.initial_backoff_s=0.2", "sources.0.reconnect.max_backoff_s=1.0",
                          f"model.path={detector}", f"sinks.jsonl.path={out}")  # fmt: skip
        stats = lambda: p.stats()["sources"][0]  # noqa: E731
        _wait_for(lambda: stats()["processed"] >= 15)
        assert stats()["reconnects"] == 0
        server.kill()  # the camera drops, no goodbye
        server.wait(10)
        _wait_for(lambda: stats()["state"] == "reconnecting", 30)
        before = stats()["processed"]
        time.sleep(1.0)  # a few failed attempts against a closed port
        server = _start_server(port, log)
        _wait_for(lambda: stats()["reconnects"] >= 1 and stats()["processed"] >= before + 15, 60)
        s = stats()
        assert s["state"] == "running" and s["errors"] >= 2 and s["last_error"].startswith("source door:")
    finally:
        server.kill()
        server.wait(10)
    p.stop()
    frames = [e["frame"] for e in read_jsonl(out)]
    assert frames == sorted(frames) and len(set(frames)) == len(frames)  # numbering goes on across the loss
    assert all(e["source_id"] == "door" for e in read_jsonl(out))
