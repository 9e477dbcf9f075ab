"""Dependencies, declared once as ``Annotated`` aliases so a handler's signature is its contract."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel
from sqlmodel import Session

from controller.context import ControllerContext
from controller.errors import Unauthenticated
from controller.loop.service import LoopRunner

_bearer = HTTPBearer(auto_error=False, description="EDGELOOP_API_TOKEN")


async def get_context(request: Request) -> ControllerContext:
    """``async``: FastAPI runs a plain ``def`` dependency in its thread pool, one hand-off per
    request for an attribute read; an ``async`` one runs on the event loop (it never blocks)."""
    return request.app.state.ctx


ContextDep = Annotated[ControllerContext, Depends(get_context)]


async def get_loop_runner(request: Request) -> LoopRunner:
    return request.app.state.loop_runner


LoopRunnerDep = Annotated[LoopRunner, Depends(get_loop_runner)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    """One transaction per request: committed when the handler returns, rolled back on any error.

    Scope "function": the commit happens before the response is sent, so a 2xx means committed
    and a failed commit becomes an error response (never a 201 for a row that is not there)."""
    with Session(ctx.engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


SessionDep = Annotated[Session, Depends(get_session, scope="function")]


def json_response(model: BaseModel) -> Response:
    """A model already built by the handler as the response, serialised once: FastAPI would
    validate a returned model against the route's ``response_model`` again (every device of a
    page, a second time). For the read paths a dashboard polls; ``response_model`` stays on the
    route for the OpenAPI schema."""
    return Response(content=model.model_dump_json(), media_type="application/json")


async def require_token(
    ctx: ContextDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:  # async: a constant-time compare, no thread-pool hand-off (see get_context)
    expected = ctx.settings.api_token or ""
    if credentials is None or not hmac.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise Unauthenticated("missing or invalid API token (Authorization: Bearer $EDGELOOP_API_TOKEN)")


TokenDep = Depends(require_token)


def has_token(ctx: ControllerContext, request: Request) -> bool:
    """Whether the request carries the API token (for routes that answer less without it)."""
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else ""
    expected = ctx.settings.api_token or ""
    return bool(given) and hmac.compare_digest(given.encode(), expected.encode())
