"""The controller processes on this database (several on one PostgreSQL, docs/deploy.md)."""

from __future__ import annotations

from fastapi import APIRouter
from sqlmodel import col, func, select

from controller.api.deps import ContextDep, SessionDep
from controller.models import ControllerInstancePublic, Device
from controller.services import instances

router = APIRouter(prefix="/controllers", tags=["controllers"])


@router.get("/", response_model=list[ControllerInstancePublic])
def list_controllers(session: SessionDep, ctx: ContextDep) -> list[ControllerInstancePublic]:
    """Each live process, when it last said so, and how many device streams it holds."""
    held = dict(
        session.exec(
            select(Device.controller_id, func.count())
            .where(col(Device.connected).is_(True))
            .group_by(col(Device.controller_id))
        ).all()
    )
    return [
        ControllerInstancePublic(
            id=i.id,
            started_at=i.started_at,
            last_seen=i.last_seen,
            database=i.database,
            streams=int(held.get(i.id, 0)),
            this=i.id == ctx.hub.instance_id,
        )  # fmt: skip
        for i in instances.live(session=session)
    ]
