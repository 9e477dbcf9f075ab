"""The security tests attack a real controller over loopback with real agents (the helpers of
tests/controller: real gRPC, real DB, real Mosquitto; only the device's engine work is scripted)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (str(ROOT), str(ROOT / "tests" / "controller")):
    if path not in sys.path:
        sys.path.insert(0, path)
