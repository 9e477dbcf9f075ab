"""The controller processes on one database, and which of them holds each device's stream.

On PostgreSQL several ``controller serve`` processes may run (docs/deploy.md, "Several
controllers"). Each has a row in ``controllerinstance`` that its rollout engine refreshes every
few seconds; a row not refreshed for ``STALE_S`` is a process that died (SIGKILL, lost host):
the first survivor to notice puts the devices it held offline (``Device.controller_id``) and
deletes the row. Their agents reconnect to a survivor, which takes them over.

SQLite is one process: a second ``controller serve`` on the same database file is refused at
start by an exclusive lock on a file beside it (``claim_sqlite``), which dies with the process.
"""

from __future__ import annotations

import fcntl
import logging
import os
from datetime import timedelta
from pathlib import Path

from sqlmodel import Session, col, delete, or_, select, update

from controller.models import ControllerInstance, Device, utcnow

log = logging.getLogger(__name__)
STALE_S = 30.0  # 15 missed refreshes (every HEARTBEAT_FLUSH_S = 2 s): a busy host is not a dead one


class DatabaseInUse(RuntimeError):
    """Another controller process already uses this SQLite database."""


def claim_sqlite(db_path: Path) -> int:
    """Hold an exclusive lock beside the SQLite file for the life of this process (the fd is
    returned; closing it releases the lock). Raises ``DatabaseInUse`` when another holds it."""
    lock = db_path.with_name(db_path.name + ".controller-lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUse(
            f"another controller process uses {db_path}: SQLite is for one controller; several "
            "controllers need PostgreSQL (EDGELOOP_DB_URL, docs/deploy.md 'Several controllers')"
        ) from None
    return fd


def join(*, session: Session, instance_id: str, database: str) -> None:
    """This process starts: its row, and no stream of its own is open (whatever a previous
    run under the same id left). Devices held by no process (rows from before there were
    several) count as its own."""
    row = session.get(ControllerInstance, instance_id) or ControllerInstance(id=instance_id)
    row.started_at = row.last_seen = utcnow()
    row.database = database
    session.add(row)
    mine = update(Device).where(col(Device.connected).is_(True))
    if database != "sqlite":  # SQLite: this is the only process, every stream was its own
        mine = mine.where(or_(col(Device.controller_id) == instance_id, col(Device.controller_id).is_(None)))
    session.exec(mine.values(connected=False, controller_id=None))


def beat(
    *, session: Session, instance_id: str, holding: set[str] | frozenset[str] = frozenset()
) -> list[str]:
    """Refresh this process's row; put the devices of processes gone silent offline and forget
    those processes. Returns their ids. When a peer took this (starved, not dead) process for
    gone, its row comes back and the streams it ``holding`` are recorded as its own again."""
    now = utcnow()
    refreshed = session.exec(
        update(ControllerInstance).where(col(ControllerInstance.id) == instance_id).values(last_seen=now)
    ).rowcount
    if not refreshed:
        session.add(ControllerInstance(id=instance_id, started_at=now, last_seen=now))
        if holding:
            log.warning(
                "this controller was taken for gone: %d streams recorded as its own again", len(holding)
            )
            session.exec(
                update(Device)
                .where(col(Device.id).in_(sorted(holding)))
                .values(connected=True, controller_id=instance_id)
            )
    stale = list(
        session.exec(
            select(ControllerInstance.id)
            .where(col(ControllerInstance.id) != instance_id)
            .where(col(ControllerInstance.last_seen) < now - timedelta(seconds=STALE_S))
            .with_for_update(skip_locked=True)
        ).all()
    )
    for dead in stale:
        session.exec(
            update(Device)
            .where(col(Device.controller_id) == dead)
            .where(col(Device.connected).is_(True))
            .values(connected=False, controller_id=None)
        )
        session.exec(delete(ControllerInstance).where(col(ControllerInstance.id) == dead))
        log.warning("controller %s stopped answering: its devices are offline until they reconnect", dead)
    # streams recorded by a process that has no row at all (stopped before its closes were
    # written, or restarted under another id)
    session.exec(
        update(Device)
        .where(col(Device.connected).is_(True))
        .where(col(Device.controller_id).is_not(None))
        .where(col(Device.controller_id).not_in(select(ControllerInstance.id)))
        .values(connected=False, controller_id=None)
    )
    return stale


def leave(*, session: Session, instance_id: str) -> None:
    """A clean stop: the row goes (its streams were closed and recorded one by one)."""
    session.exec(delete(ControllerInstance).where(col(ControllerInstance.id) == instance_id))


def live(*, session: Session) -> list[ControllerInstance]:
    return list(session.exec(select(ControllerInstance).order_by(col(ControllerInstance.id))).all())
