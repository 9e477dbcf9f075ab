"""Rollouts: create (selector + strategy + gates), inspect, pause, resume, abort, roll back."""

from __future__ import annotations

from fastapi import APIRouter, Query, Response
from sqlmodel import Session

from controller import crud
from controller.api.deps import ContextDep, SessionDep, json_response
from controller.models import RolloutCreate, RolloutPublic, RolloutsPublic
from controller.services import rollouts

router = APIRouter(prefix="/rollouts", tags=["rollouts"])


@router.post("/", response_model=RolloutPublic, status_code=201)
def create_rollout(session: SessionDep, ctx: ContextDep, rollout_in: RolloutCreate) -> RolloutPublic:
    rollout = rollouts.create_rollout(session=session, rollout_in=rollout_in)
    out = crud.rollout_public(session=session, rollout=rollout)
    session.commit()
    ctx.wake()
    return out


@router.get("/", response_model=RolloutsPublic)
def list_rollouts(
    session: SessionDep, skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)
) -> RolloutsPublic:
    rows, count = crud.list_rollouts(session=session, skip=skip, limit=limit)
    return RolloutsPublic(
        data=[crud.rollout_public(session=session, rollout=r, with_deployments=False) for r in rows],
        count=count,
    )


@router.get("/{rollout_id}", response_model=RolloutPublic)
def get_rollout(
    ctx: ContextDep,
    rollout_id: str,
    deployments: bool = True,
    deployments_skip: int = Query(0, ge=0),
    deployments_limit: int = Query(1000, ge=1, le=100_000),
) -> Response:
    """One rollout with its counts and a page of its deployments (``deployments_skip`` /
    ``deployments_limit``, wave and device order; ``counts`` gives their total);
    ``deployments=false`` returns only the counts. A read with its own session, like the
    devices page."""
    with Session(ctx.engine) as session:
        rollout = crud.get_rollout(session=session, rollout_id=rollout_id)
        return json_response(crud.rollout_public(session=session, rollout=rollout, with_deployments=deployments,
                                                 skip=deployments_skip, limit=deployments_limit))  # fmt: skip


def _done(session: SessionDep, ctx: ContextDep, rollout) -> RolloutPublic:  # noqa: ANN001
    session.commit()
    ctx.wake()
    return crud.rollout_public(session=session, rollout=rollout)


@router.post("/{rollout_id}/pause", response_model=RolloutPublic)
def pause(session: SessionDep, ctx: ContextDep, rollout_id: str) -> RolloutPublic:
    return _done(session, ctx, rollouts.pause_rollout(session=session, rollout_id=rollout_id))


@router.post("/{rollout_id}/resume", response_model=RolloutPublic)
def resume(session: SessionDep, ctx: ContextDep, rollout_id: str) -> RolloutPublic:
    return _done(session, ctx, rollouts.resume_rollout(session=session, rollout_id=rollout_id))


@router.post("/{rollout_id}/abort", response_model=RolloutPublic)
def abort(session: SessionDep, ctx: ContextDep, rollout_id: str, rollback: bool = False) -> RolloutPublic:
    return _done(
        session,
        ctx,
        rollouts.abort_rollout(session=session, hub=ctx.hub, rollout_id=rollout_id, rollback=rollback),
    )


@router.post("/{rollout_id}/rollback", response_model=RolloutPublic)
def rollback(session: SessionDep, ctx: ContextDep, rollout_id: str) -> RolloutPublic:
    return _done(session, ctx, rollouts.rollback_rollout(session=session, hub=ctx.hub, rollout_id=rollout_id))
