"""Enrolment tokens: create (the token is shown once), list, revoke."""

from __future__ import annotations

from fastapi import APIRouter

from controller.api.deps import SessionDep
from controller.models import EnrollmentTokenCreate, EnrollmentTokenCreated, EnrollmentTokenPublic
from controller.services import enrollment

router = APIRouter(prefix="/enrollment-tokens", tags=["enrollment"])


@router.post("/", response_model=EnrollmentTokenCreated, status_code=201)
def create_token(session: SessionDep, token_in: EnrollmentTokenCreate) -> EnrollmentTokenCreated:
    row, token = enrollment.create_token(session=session, token_in=token_in)
    return EnrollmentTokenCreated(**EnrollmentTokenPublic.model_validate(row).model_dump(), token=token)


@router.get("/", response_model=list[EnrollmentTokenPublic])
def list_tokens(session: SessionDep) -> list[EnrollmentTokenPublic]:
    return [EnrollmentTokenPublic.model_validate(t) for t in enrollment.list_tokens(session=session)]


@router.post("/{token_id}/revoke", response_model=EnrollmentTokenPublic)
def revoke_token(session: SessionDep, token_id: str) -> EnrollmentTokenPublic:
    return EnrollmentTokenPublic.model_validate(enrollment.revoke_token(session=session, token_id=token_id))
