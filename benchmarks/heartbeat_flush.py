"""The heartbeat flush on PostgreSQL: ``fleet.flush_heartbeats`` (one executemany UPDATE for
every device seen) against the way before it (one UPDATE statement per device), in the same run
on a scratch database, and the ratio.

    python benchmarks/heartbeat_flush.py --devices 10000 \
        --server postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import sqlalchemy as sa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlmodel import col, update  # noqa: E402

from controller.db import make_engine, migrate, session_scope  # noqa: E402
from controller.models import Device  # noqa: E402
from controller.services import fleet  # noqa: E402
from controller.services.hub import HeartbeatSeen  # noqa: E402


def per_device(engine: sa.engine.Engine, seen: dict[str, HeartbeatSeen]) -> None:
    with session_scope(engine) as session:
        for device_id, hb in seen.items():
            session.exec(
                update(Device)
                .where(col(Device.id) == device_id)
                .values(last_seen=datetime.fromtimestamp(hb.ts, timezone.utc), active_version=hb.active_version,
                        candidate_version=hb.candidate_version, previous_version=hb.previous_version)
            )  # fmt: skip


def batched(engine: sa.engine.Engine, seen: dict[str, HeartbeatSeen]) -> None:
    with session_scope(engine) as session:
        fleet.flush_heartbeats(session=session, seen=seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--server", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args()
    admin = sa.create_engine(args.server, isolation_level="AUTOCOMMIT")
    name = f"edgeloop_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        engine = make_engine(f"{args.server.rpartition('/')[0]}/{name}")
        migrate(engine)
        with session_scope(engine) as session:
            session.add_all([Device(id=f"d{i}") for i in range(args.devices)])
        for rnd in range(args.rounds):
            timings = {}
            for how, fn in (("per-device", per_device), ("batched", batched)):
                seen = {f"d{i}": HeartbeatSeen(time.time(), "v2", "", "v1") for i in range(args.devices)}
                t0 = time.perf_counter()
                fn(engine, seen)
                timings[how] = time.perf_counter() - t0
            print(f"{args.devices} devices, round {rnd}: per-device {timings['per-device']:.2f} s, "
                  f"batched {timings['batched']:.2f} s, {timings['per-device'] / timings['batched']:.1f}x")  # fmt: skip
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
