"""Trainer jobs: queued here, run by the controller through ``trainer.jobs.run_action``."""

from __future__ import annotations

from fastapi import APIRouter, Query

from controller import crud
from controller.api.deps import SessionDep
from controller.models import JobCreate, JobPublic, JobsPublic

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post("/", response_model=JobPublic, status_code=201)
def create_job(session: SessionDep, job_in: JobCreate) -> JobPublic:
    return JobPublic.model_validate(crud.create_job(session=session, job_in=job_in))


@router.get("/", response_model=JobsPublic)
def list_jobs(
    session: SessionDep, skip: int = Query(0, ge=0), limit: int = Query(100, ge=1, le=1000)
) -> JobsPublic:
    rows, count = crud.list_jobs(session=session, skip=skip, limit=limit)
    return JobsPublic(data=[JobPublic.model_validate(j) for j in rows], count=count)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(session: SessionDep, job_id: str) -> JobPublic:
    return JobPublic.model_validate(crud.get_job(session=session, job_id=job_id))
