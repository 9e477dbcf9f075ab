"""One place that turns domain errors into HTTP responses with the reason."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from controller.errors import ControllerError, Unauthenticated


def install(app: FastAPI) -> None:
    @app.exception_handler(ControllerError)
    async def _controller_error(request: Request, exc: ControllerError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(status_code=exc.status_code, content={"detail": exc.message}, headers=headers)
