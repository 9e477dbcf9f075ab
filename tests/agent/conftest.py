"""Fixtures of the agent tests: tiny models and image folders, a probe, an engine cache."""

from __future__ import annotations

import sys
from pathlib import Path

# This folder is named like the package it tests: with pytest's default "prepend" import mode
# and an editable install (a meta-path finder consulted after sys.path), `import agent` would
# resolve to tests/agent as a namespace package. Put the repository root on sys.path first.
ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if getattr(sys.modules.get("agent"), "__file__", "") is None:
    del sys.modules["agent"]

import pytest  # noqa: E402
from agent_testkit import colour_folder, make_artifact  # noqa: E402

from agent.engine_cache import EngineCache  # noqa: E402
from agent.probe import probe_hardware  # noqa: E402


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return colour_folder(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def model_path(artifacts: Path) -> Path:
    return make_artifact(artifacts, "dynamic")


@pytest.fixture(scope="session")
def profile():
    return probe_hardware(threads=1)


@pytest.fixture
def cache(tmp_path: Path) -> EngineCache:
    return EngineCache(tmp_path / "engines")
