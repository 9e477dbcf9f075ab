"""protos/generate.py --check also refuses dependency floors below what the generated stubs need:
a floor that pip may satisfy with a runtime the stubs refuse at import is a broken install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from protos.generate import ROOT, declared_floors, floor_problems, gencode_versions


def test_floors_cover_the_gencode_versions() -> None:
    gencode = gencode_versions(ROOT)
    assert set(gencode) == {"protobuf", "grpcio"}, gencode
    assert floor_problems(gencode, declared_floors(ROOT / "pyproject.toml")) == []


def test_a_floor_below_the_gencode_is_named(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text(
        'dependencies = ["grpcio>=1.60", "protobuf>=5.26", "numpy>=1.26"]\n', encoding="utf-8"
    )
    problems = floor_problems({"protobuf": (7, 35, 1), "grpcio": (1, 85, 1)}, declared_floors(pyproject))
    assert len(problems) == 2
    assert any("protobuf>=5.26" in p and "protobuf>=7.35.1" in p for p in problems)
    assert any("grpcio>=1.85.1" in p for p in problems)


def test_a_missing_floor_is_named() -> None:
    problems = floor_problems({"protobuf": (7, 35, 1)}, {"numpy": (1, 26)})
    assert problems == ["pyproject.toml declares no floor for protobuf; the stubs need protobuf>=7.35.1"]


def test_check_passes_on_this_tree() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "protos" / "generate.py"), "--check"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
