"""The import contracts in pyproject.toml (checked on the real tree by `lint-imports` in
scripts/test.sh) do catch what they are written for: run them on a small tree that breaks each."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BAD_TREE = {
    "protos/__init__.py": "import agent\n",
    "agent/__init__.py": "def lazy():\n    import torch  # a lazy import counts too\n",
    "trainer/__init__.py": "",
    "trainer/jobs.py": "",
    "trainer/engine.py": "import controller\n",
    "trainer/a.py": "from trainer import b\n",
    "trainer/b.py": "from trainer import a\n",
    "controller/__init__.py": "",
    "controller/routes.py": "from trainer import jobs\nfrom trainer import engine\n",
    "controller/loop/__init__.py": "from controller import demo\n",
    "controller/demo/__init__.py": "",
    "edgeloop/__init__.py": "",
}


def _contract_names() -> list[str]:
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    return re.findall(r'^name = "(.+)"$', text.split("[tool.importlinter]", 1)[1], flags=re.M)


def test_every_contract_breaks_on_a_tree_that_violates_it(tmp_path: Path) -> None:
    for rel, body in BAD_TREE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body, encoding="utf-8")
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    proc = subprocess.run(
        [str(lint), str(ROOT / "pyproject.toml"), "--no-cache"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    names = _contract_names()
    assert len(names) >= 6, names
    for name in names:
        assert f"{name} BROKEN" in out, f"contract not broken by the bad tree: {name}\n{out}"
