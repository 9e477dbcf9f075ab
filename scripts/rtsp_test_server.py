#!/usr/bin/env python3
"""A loopback RTSP server for the stream tests and the benchmark: GStreamer's RTSP server
(Debian: python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{good,bad,ugly}), run with
the system Python that has PyGObject (``/usr/bin/python3 scripts/rtsp_test_server.py``).

``--port P --path /cam`` serves a live moving test pattern (H.264, ``--size WxH``, ``--fps F``)
at ``rtsp://127.0.0.1:P/cam``; ``--file CLIP.mp4`` serves an H.264 mp4 instead, looping. Prints
``READY rtsp://...`` once it listens. Killing it (any signal) is how the tests drop the camera.
"""

from __future__ import annotations

import argparse
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/cam")
    p.add_argument("--size", default="320x192")
    p.add_argument("--fps", type=int, default=15)
    p.add_argument("--file", help="serve this H.264 mp4 (looped) instead of a test pattern")
    args = p.parse_args()
    Gst.init(None)
    w, h = args.size.split("x")
    if args.file:
        launch = (
            f"( multifilesrc location={args.file} loop=true ! qtdemux ! h264parse "
            "! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    else:
        launch = (
            f"( videotestsrc is-live=true pattern=ball ! video/x-raw,width={w},height={h},"
            f"framerate={args.fps}/1 ! x264enc tune=zerolatency speed-preset=ultrafast "
            f"key-int-max={args.fps} ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"
        )
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(launch)
    factory.set_shared(True)
    server.get_mount_points().add_factory(args.path, factory)
    if server.attach(None) == 0:
        print(f"could not listen on 127.0.0.1:{args.port}", file=sys.stderr)
        return 1
    print(f"READY rtsp://127.0.0.1:{args.port}{args.path}", flush=True)
    GLib.MainLoop().run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
