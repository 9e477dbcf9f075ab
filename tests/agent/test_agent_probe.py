"""Hardware probe: profile, stable fingerprint, capabilities, env settings, CLI JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agent.probe import capabilities, compute_fingerprint, probe_capabilities, probe_hardware

ROOT = Path(__file__).resolve().parents[2]


def test_profile_describes_this_host() -> None:
    p = probe_hardware(threads=None, hardware_class=None)
    assert p.arch and p.cpu_model and p.cpu_cores >= 1 and p.memory_bytes > 0
    assert "onnxruntime" in p.runtimes
    assert p.hardware_class.startswith(p.arch)
    assert len(p.fingerprint) == 16


def test_fingerprint_is_stable_and_covers_threads_and_class() -> None:
    a = probe_hardware(threads=1, hardware_class=None)
    b = probe_hardware(threads=1, hardware_class=None)
    assert a.fingerprint == b.fingerprint == compute_fingerprint(a)
    assert a.hardware_class.endswith("-1t")
    assert probe_hardware(threads=2, hardware_class=None).fingerprint != a.fingerprint
    named = probe_hardware(threads=1, hardware_class="edge-small")
    assert named.hardware_class == "edge-small" and named.fingerprint != a.fingerprint
    # hostname and memory are not part of it
    a.hostname, a.memory_bytes = "elsewhere", 1
    assert compute_fingerprint(a) == b.fingerprint


def test_capabilities_list_every_backend_with_reasons() -> None:
    caps = capabilities(probe_hardware(threads=None, hardware_class=None))
    by = {(c.backend, c.precision, c.device): c for c in caps}
    for precision in ("fp32", "fp16", "int8"):
        assert by[("onnxruntime", precision, "cpu")].available
    trt = [c for c in caps if c.backend == "tensorrt"]
    assert trt, "tensorrt must be listed even where it cannot run"
    for c in trt:
        if not c.available:
            assert c.reason
    assert probe_capabilities()  # the daemon's entry point


def test_cli_probe_honours_environment(tmp_path: Path) -> None:
    env = dict(os.environ, EDGELOOP_AGENT_THREADS="1", EDGELOOP_HARDWARE_CLASS="emulated-nano")
    out = subprocess.run(
        [sys.executable, "-m", "edgeloop.cli", "agent", "probe", "--out", str(tmp_path / "p.json")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    assert data["hardware_class"] == "emulated-nano"
    assert data["profile"]["cpu_threads_limit"] == 1
    assert any(c["backend"] == "tensorrt" and not c["available"] for c in data["capabilities"])
    assert json.loads((tmp_path / "p.json").read_text())["fingerprint"] == data["fingerprint"]
