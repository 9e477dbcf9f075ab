"""Fixtures of the agent tests: tiny models and image folders, a probe, an engine cache."""

from __future__ import annotations

from pathlib import Path

import pytest
from agent_testkit import colour_folder, make_artifact

from agent.engine_cache import EngineCache
from agent.probe import probe_hardware


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
