"""activate_then_watch with several controllers: the health window asks the database whether
the device is connected, not this process's own streams. A device whose stream another
controller holds is healthy; before the fix every such device was rolled back as "offline"."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from controller.db import session_scope
from controller.models import Command, Deployment, DeploymentState, Device, Rollout, Strategy, utcnow
from controller.services import rollouts
from controller.services.hub import SessionHub


@pytest.mark.parametrize(("connected", "expected"), [(True, DeploymentState.succeeded), (False, None)])
def test_health_window_uses_the_fleet_wide_connection(db_engine: Engine, connected: bool, expected) -> None:  # noqa: ANN001
    strategy = Strategy(mode="activate_then_watch", health_window_s=1.0)
    with session_scope(db_engine) as session:
        session.add(Device(id="d1", active_version="m:2", connected=connected, controller_id="other"))
        rollout = Rollout(model_version="m:2", strategy=strategy.model_dump(mode="json"))
        session.add(rollout)
        session.flush()
        d = Deployment(rollout_id=rollout.id, device_id="d1", state=DeploymentState.gating,
                       message=f"{rollouts.WATCHING} for 1s; gate passed",
                       updated_at=utcnow() - timedelta(seconds=5))  # fmt: skip
        session.add(d)
        session.flush()
        # this process holds no stream at all: the device is on the other controller
        rollouts._watch(session=session, hub=SessionHub("me"), rollout=rollout, d=d, now=utcnow(),
                        reason="gate passed", strategy=strategy)  # fmt: skip
        state, message = d.state, d.message
    with Session(db_engine) as session:
        sent = session.exec(select(Command)).all()
    if expected is not None:
        assert state == expected, message
        assert sent == []
    else:  # really offline everywhere: rolled back
        assert "the device went offline" in message
        assert [c.kind.value for c in sent] == ["rollback"]
