"""Shared fixtures: real services, started by the tests themselves where possible.

- ``mqtt_broker``: a Mosquitto on a free loopback port (installed by .ci/run when missing), or
  the pure-Python amqtt broker when no Mosquitto binary exists. Never mocked.
- ``postgres_url``: $EDGELOOP_TEST_POSTGRES_URL, else a server on 127.0.0.1:5432, else a
  testcontainers PostgreSQL when a Docker engine is reachable; otherwise the test is skipped
  with the reason (it is then reported as skipped, never as passed).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator

import pytest

from controller.broker import LocalBroker, start_local_broker


@pytest.fixture
def mqtt_broker() -> Iterator[LocalBroker]:
    broker = start_local_broker()
    try:
        yield broker
    finally:
        broker.stop()


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """URL of a PostgreSQL server (maintenance database), found or started."""
    url = os.environ.get("EDGELOOP_TEST_POSTGRES_URL")
    if url:
        yield url
        return
    if _port_open("127.0.0.1", 5432):
        yield "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        return
    try:
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16-alpine", driver="psycopg") as pg:
            yield pg.get_connection_url()
            return
    except Exception as exc:  # no Docker engine here: say so and skip
        pytest.skip(f"no PostgreSQL: none on 127.0.0.1:5432 and testcontainers failed ({exc})")


@pytest.fixture
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, empty database on that server for one test, dropped afterwards."""
    import sqlalchemy as sa

    name = f"edgeloop_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base, _, _ = postgres_server_url.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
