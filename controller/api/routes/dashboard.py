"""The dashboard: one HTML page (no build step, no CDN) that polls ``/api/v1/dashboard``.

The page itself holds no data; it reads the API token from the URL fragment
(``/dashboard#token=...``, never sent to the server in a request line) and calls the JSON
endpoint with it every two seconds.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from sqlmodel import SQLModel

from controller import crud
from controller.api.deps import ContextDep, SessionDep
from controller.models import DevicePublic, MatrixCell, RolloutPublic
from controller.services import results

PAGE = Path(__file__).resolve().parents[2] / "dashboard" / "index.html"

page_router = APIRouter(tags=["dashboard"], include_in_schema=False)
router = APIRouter(prefix="/dashboard", tags=["dashboard"])


class DashboardSummary(SQLModel):
    devices: list[DevicePublic]
    online: int
    classes: dict[str, int]
    rollouts: list[RolloutPublic]
    matrix: list[MatrixCell]
    pipelines: dict[str, list[dict]] = {}  # by device id: the video pipelines it last reported


@page_router.get("/", response_class=HTMLResponse)
@page_router.get("/dashboard", response_class=HTMLResponse)
def page() -> HTMLResponse:
    return HTMLResponse(PAGE.read_text(encoding="utf-8"))


@router.get("", response_model=DashboardSummary)
def summary(session: SessionDep, ctx: ContextDep) -> DashboardSummary:
    devices, _ = crud.list_devices(session=session, limit=10_000)
    public = [crud.device_public(d) for d in devices]
    classes: dict[str, int] = {}
    for d in public:
        classes[d.hardware_class] = classes.get(d.hardware_class, 0) + 1
    rows, _ = crud.list_rollouts(session=session, limit=5)
    return DashboardSummary(
        devices=public,
        online=sum(d.online for d in public),
        classes=classes,
        rollouts=[crud.rollout_public(session=session, rollout=r, with_deployments=False) for r in rows],
        matrix=results.results_matrix(session=session).cells,
        pipelines={d.id: ctx.streams[d.id]["pipelines"] for d in public if d.id in ctx.streams},
    )
