"""Dependencies, declared once as ``Annotated`` aliases so a handler's signature is its contract."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlmodel import Session

from controller.errors import Unauthenticated
from controller.runtime import Controller

_bearer = HTTPBearer(auto_error=False, description="EDGELOOP_API_TOKEN")


def get_controller(request: Request) -> Controller:
    return request.app.state.controller


ControllerDep = Annotated[Controller, Depends(get_controller)]


def get_session(ctl: ControllerDep) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back on any error.

    Scope "function": the commit happens before the response is sent, so a 2xx means committed
    and a failed commit becomes an error response (never a 201 for a row that is not there)."""
    with Session(ctl.engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def require_token(
    ctl: ControllerDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    expected = ctl.settings.api_token or ""
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Unauthenticated("missing or invalid API token (Authorization: Bearer $EDGELOOP_API_TOKEN)")


TokenDep = Depends(require_token)
