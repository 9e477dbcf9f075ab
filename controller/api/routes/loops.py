"""Closed loops: goals per device class in, a report of what each class runs out (controller/loop/)."""

from __future__ import annotations

import base64
import re

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from controller.api.deps import LoopRunnerDep
from controller.errors import NotFound
from controller.loop.service import LoopCreate, LoopPublic

router = APIRouter(prefix="/loops", tags=["loops"])


@router.post("/", response_model=LoopPublic, status_code=201)
def create_loop(loops: LoopRunnerDep, loop_in: LoopCreate) -> LoopPublic:
    """Validate goals, spec, shards and device classes, then start the loop in the controller."""
    return loops.start(loop_in)


@router.get("/", response_model=list[LoopPublic])
def list_loops(loops: LoopRunnerDep) -> list[LoopPublic]:
    return loops.list()


@router.get("/{loop_id}", response_model=LoopPublic)
def get_loop(loops: LoopRunnerDep, loop_id: str) -> LoopPublic:
    return loops.get(loop_id)


@router.get("/{loop_id}/report", response_class=HTMLResponse)
def get_loop_report(loops: LoopRunnerDep, loop_id: str) -> HTMLResponse:
    """The report as one page (plots inlined, so it opens with the API token's request alone)."""
    folder = loops.report_dir(loop_id)
    index = folder / "index.html"
    if not index.is_file():
        raise NotFound(f"loop {loop_id} has no report yet (state: {loops.get(loop_id).state})")

    def inline(match: re.Match) -> str:
        image = folder / match.group(1)
        if image.parent != folder or not image.is_file():
            return match.group(0)
        mime = "image/png" if image.suffix == ".png" else "image/jpeg"
        return f"src='data:{mime};base64,{base64.b64encode(image.read_bytes()).decode()}'"

    html = re.sub(r"src='([\w.\-]+\.(?:png|jpg))'", inline, index.read_text(encoding="utf-8"))
    return HTMLResponse(html)
