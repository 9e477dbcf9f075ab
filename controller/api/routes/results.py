"""Measured results: the raw reports and the matrix the policy and the dashboard read."""

from __future__ import annotations

from fastapi import APIRouter, Query

from controller import crud
from controller.api.deps import SessionDep
from controller.models import ResultPublic, ResultsMatrix, ResultsPublic
from controller.services import results

router = APIRouter(prefix="/results", tags=["results"])


@router.get("/", response_model=ResultsPublic)
def list_results(
    session: SessionDep,
    device_id: str | None = None,
    hardware_class: str | None = None,
    model_version: str | None = None,
    round_id: str | None = None,
    skip: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=10_000),
) -> ResultsPublic:
    rows, count = crud.list_results(
        session=session,
        device_id=device_id,
        hardware_class=hardware_class,
        model_version=model_version,
        round_id=round_id,
        skip=skip,
        limit=limit,
    )
    return ResultsPublic(data=[ResultPublic.model_validate(r) for r in rows], count=count)


@router.get("/matrix", response_model=ResultsMatrix)
def matrix(
    session: SessionDep,
    hardware_class: str | None = None,
    model_version: str | None = None,
    round_id: str | None = None,
) -> ResultsMatrix:
    return results.results_matrix(
        session=session, hardware_class=hardware_class, model_version=model_version, round_id=round_id
    )
