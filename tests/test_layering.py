"""The folder boundaries of DESIGN.md, checked on the source: the agent never imports torch or
the trainer/controller, and protos import nothing of ours."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FORBIDDEN = {
    "agent": {"torch", "torchvision", "timm", "trainer", "controller", "transformers"},
    "protos": {"agent", "trainer", "controller"},
    "trainer": {"agent", "controller"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("folder", sorted(FORBIDDEN))
def test_folder_imports_respect_boundaries(folder: str) -> None:
    files = sorted((ROOT / folder).rglob("*.py"))
    assert files, f"{folder}/ has no Python files"
    offenders = {
        str(f.relative_to(ROOT)): sorted(imported_roots(f) & FORBIDDEN[folder])
        for f in files
        if imported_roots(f) & FORBIDDEN[folder]
    }
    assert not offenders, f"{folder}/ imports what it must not: {offenders}"


def test_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch.nn as nn\nfrom trainer.x import y\n", encoding="utf-8")
    assert imported_roots(bad) == {"torch", "trainer"}
