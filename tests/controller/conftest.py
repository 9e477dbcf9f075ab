"""Fixtures of the controller tests: a fresh database per test (SQLite file or PostgreSQL),
a running controller on loopback, and the tiny models it serves."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ctl_helpers import make_controller
from sqlalchemy.engine import Engine

from controller.db import make_engine, migrate
from controller.runtime import Controller


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'controller.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    """A migrated engine on ``db_url`` (SQLite and PostgreSQL), for tests of the database code."""
    engine = make_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'controller.db'}"


@pytest.fixture
def controller(tmp_path: Path, db_url: str) -> Iterator[Controller]:
    ctl = make_controller(tmp_path / "data", db_url, http=False)
    try:
        yield ctl
    finally:
        ctl.stop()
