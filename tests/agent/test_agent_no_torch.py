"""The agent never imports torch (it installs without it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "agent.cli", "agent.probe", "agent.backends.onnxruntime", "agent.backends.tensorrt", "agent.engine_cache",
    "agent.engines", "agent.bench", "agent.evaluate", "agent.server", "agent.slots", "agent.telemetry",
    "agent.fleet_executor",
]  # fmt: skip


def test_agent_imports_no_torch() -> None:
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "from agent.backends import all_backends\n"
        + "all_backends()\n"
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'trainer', 'controller'))\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
