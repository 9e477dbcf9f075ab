"""The agent never imports torch (it installs without it), not even while it builds engines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = [
    "agent.cli", "agent.probe", "agent.backends.onnxruntime", "agent.backends.tensorrt", "agent.engine_cache",
    "agent.engines", "agent.bench", "agent.evaluate", "agent.server", "agent.slots", "agent.telemetry",
    "agent.runtime", "agent.shards", "agent.fleet.daemon", "agent.batching", "agent.dataplane", "agent.preprocess", "agent.calibration",
]  # fmt: skip

BUILD = """
from pathlib import Path
from agent_testkit import colour_folder, make_artifact
from agent.engine_cache import EngineCache
from agent.engines import build_engine
from agent.model_spec import resolve_model
from agent.probe import probe_hardware
root = Path(sys.argv[1])
model = resolve_model(make_artifact(root, "m"))
images = colour_folder(root / "images", per_class=2)
for precision in ("fp32", "fp16", "int8"):
    build_engine(model, profile=probe_hardware(), cache=EngineCache(root / "c"), precision=precision, calib_dir=images)
"""


def test_agent_imports_no_torch(tmp_path) -> None:
    code = (
        "import sys\n"
        + f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        + "".join(f"import {m}\n" for m in MODULES)
        + "from agent.backends import all_backends\n"
        + "all_backends()\n"
        + BUILD
        + "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'trainer', 'controller'))\n"
        + "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True, timeout=120)
