"""RTSP on loopback, both ways. In: a real RTSP camera (GStreamer's RTSP server, ``scripts/rtsp_test_server.py``),
killed with SIGKILL mid-stream and started again on the same port: the source reconnects with
backoff, counts it, and its frame numbers keep counting. Out: the annotated stream pushed to an
RTSP server (FFmpeg listening). Each skips, with the reason, where its server is not installed
(scripts/test.sh installs both on Debian)."""

from __future__ import annotations

import shutil
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


@pytest.mark.skipif(bool(MISSING), reason=MISSING)
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


FFMPEG = shutil.which("ffmpeg")


@pytest.mark.skipif(FFMPEG is None, reason="ffmpeg not installed (apt-get install -y ffmpeg)")
def test_annotated_stream_is_pushed_to_an_rtsp_server(make_pipeline, clip, detector, tmp_path) -> None:
    """The RTSP sink pushes H.264 (RTSP RECORD) to a server: FFmpeg listening, as a recorder."""
    import av

    video, gt = clip
    port = _free_port()
    got = tmp_path / "recorded.mkv"
    recorder = subprocess.Popen([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-rtsp_flags", "listen",
                                 "-timeout", "60", "-i", f"rtsp://127.0.0.1:{port}/out", "-c", "copy", str(got)],
                                stderr=(tmp_path / "ffmpeg.log").open("wb"))  # fmt: skip
    try:
        time.sleep(2.0)  # FFmpeg binds its listening socket (probing it would take its one connection)
        p = make_pipeline("sources.0.id=cam", f"sources.0.uri={video}", f"model.path={detector}",
                          f"sinks.rtsp.url=rtsp://127.0.0.1:{port}/out")  # fmt: skip
        assert p.wait(60)
        p.stop()  # closes the RTSP session: the recorder finishes its file
        assert recorder.wait(30) == 0, (tmp_path / "ffmpeg.log").read_text()
    finally:
        if recorder.poll() is None:
            recorder.kill()
            recorder.wait(10)
    assert [s.failures for s in p.sinks] == [0]
    with av.open(str(got)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == len(gt["frames"]) and (frames[0].width, frames[0].height) == (320, 192)
