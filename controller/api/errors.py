"""One place that turns domain errors into HTTP responses with the reason."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError

from controller.errors import ControllerError, Unauthenticated


def install(app: FastAPI) -> None:
    @app.exception_handler(ControllerError)
    async def _controller_error(request: Request, exc: ControllerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.message}, headers=headers)

    @app.exception_handler(IntegrityError)
    async def _integrity_error(request: Request, exc: IntegrityError) -> JSONResponse:
        # a concurrent request won a unique constraint; the transaction was rolled back
        return JSONResponse(
            status_code=409, content={"detail": f"conflicts with an existing row: {exc.orig}"}
        )
