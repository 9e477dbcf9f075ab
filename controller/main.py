"""The FastAPI application factory (nothing is built at import)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.api import errors
from controller.api.deps import TokenDep, has_token
from controller.api.routes import (
    controllers,
    dashboard,
    devices,
    enrollment,
    jobs,
    loops,
    models,
    results,
    rollouts,
)
from controller.context import ControllerContext
from controller.core.config import VERSION
from controller.db import check_db
from controller.loop.service import LoopRunner

API_PREFIX = "/api/v1"


def _unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(ctx: ControllerContext, loop_runner: LoopRunner, *, grpc_port: int) -> FastAPI:
    """Routes get ``ctx`` (the loop routes also ``loop_runner``) through ``controller/api/deps.py``;
    ``grpc_port`` is the bound port ``/healthz`` reports."""
    app = FastAPI(
        title="edgeloop controller",
        version=VERSION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        generate_unique_id_function=_unique_id,
    )
    app.state.ctx = ctx
    app.state.loop_runner = loop_runner
    errors.install(app)

    api = APIRouter(prefix=API_PREFIX, dependencies=[TokenDep])
    for module in (devices, enrollment, models, rollouts, results, jobs, loops, dashboard, controllers):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(dashboard.page_router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Touches the database: a controller that cannot read it is not healthy."""
        check_db(ctx.engine)
        return {"status": "ok", "grpc_port": str(grpc_port), "controller_id": ctx.hub.instance_id}

    @app.get("/metrics", tags=["health"])
    def metrics(request: Request) -> Response:
        """Fleet-wide series for anyone; the per-device series (their labels name device ids)
        only with the API token (Prometheus: ``authorization: {credentials: ...}``)."""
        registry = ctx.metrics.registry if has_token(ctx, request) else ctx.metrics.public_view()
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return app
