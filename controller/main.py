"""The FastAPI application factory (nothing is built at import)."""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from controller.api import errors
from controller.api.deps import TokenDep
from controller.api.routes import dashboard, devices, jobs, loops, models, results, rollouts
from controller.core.config import VERSION
from controller.db import check_db
from controller.runtime import Controller

API_PREFIX = "/api/v1"


def _unique_id(route: APIRoute) -> str:
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


def create_app(ctl: Controller) -> FastAPI:
    app = FastAPI(
        title="edgeloop controller",
        version=VERSION,
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url="/docs",
        generate_unique_id_function=_unique_id,
    )
    app.state.controller = ctl
    errors.install(app)

    api = APIRouter(prefix=API_PREFIX, dependencies=[TokenDep])
    for module in (devices, models, rollouts, results, jobs, loops, dashboard):
        api.include_router(module.router)
    app.include_router(api)
    app.include_router(dashboard.page_router)

    @app.get("/healthz", tags=["health"])
    def healthz() -> dict[str, str]:
        """Touches the database: a controller that cannot read it is not healthy."""
        check_db(ctl.engine)
        return {"status": "ok", "grpc_port": str(ctl.grpc_port)}

    @app.get("/metrics", tags=["health"])
    def metrics() -> Response:
        return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
