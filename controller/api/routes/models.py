"""Model versions: import an ONNX + manifest (ours or foreign), list, lineage; data shards."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, UploadFile

from controller import crud
from controller.api.deps import ContextDep, SessionDep
from controller.errors import InvalidInput
from controller.models import ArtifactPublic, LineagePublic, ModelVersionPublic, ModelVersionsPublic
from controller.services import artifacts

router = APIRouter(tags=["models"])
MAX_MANIFEST_BYTES = 1 << 20


@router.post("/models/import", response_model=ModelVersionPublic, status_code=201)
def import_model(
    session: SessionDep,
    ctx: ContextDep,
    onnx: Annotated[UploadFile, File(description="the ONNX file")],
    manifest: Annotated[
        UploadFile, File(description="manifest.json (protos/artifact.proto Manifest as JSON)")
    ],
    source: Annotated[str, Form()] = "import",
) -> ModelVersionPublic:
    raw = manifest.file.read(MAX_MANIFEST_BYTES + 1)
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InvalidInput("manifest larger than 1 MiB")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput("manifest is not UTF-8 JSON") from exc
    mv = artifacts.import_model(
        session=session,
        signer=ctx.signer,
        store_dir=ctx.settings.artifacts_dir,
        store=ctx.store,
        max_bytes=ctx.settings.max_upload_bytes,
        onnx_src=onnx.file,
        manifest_json=text,
        source=source,
    )
    return crud.model_version_public(session=session, mv=mv)


@router.get("/models", response_model=ModelVersionsPublic)
def list_models(
    session: SessionDep,
    name: str | None = None,
    skip: int = Query(0, ge=0),
    limit: int = Query(1000, ge=1, le=10_000),
) -> ModelVersionsPublic:
    rows, count = crud.list_model_versions(session=session, name=name, skip=skip, limit=limit)
    return ModelVersionsPublic(
        data=[crud.model_version_public(session=session, mv=m) for m in rows], count=count
    )


@router.get("/models/{version}", response_model=ModelVersionPublic)
def get_model(session: SessionDep, version: str) -> ModelVersionPublic:
    return crud.model_version_public(
        session=session, mv=crud.get_model_version(session=session, version=version)
    )


@router.get("/models/{version}/lineage", response_model=LineagePublic)
def lineage(session: SessionDep, version: str) -> LineagePublic:
    mv = crud.get_model_version(session=session, version=version)
    ancestors, seen, parent = [], {mv.version}, mv.parent_version
    while parent and parent not in seen:
        seen.add(parent)
        p = crud.find_model_version(session=session, version=parent)
        if p is None:
            break
        ancestors.append(crud.model_version_public(session=session, mv=p))
        parent = p.parent_version
    everyone, _ = crud.list_model_versions(session=session)
    children = [
        crud.model_version_public(session=session, mv=m) for m in everyone if m.parent_version == mv.version
    ]
    return LineagePublic(version=mv.version, ancestors=ancestors, children=children)


@router.post("/artifacts/shards", response_model=ArtifactPublic, status_code=201)
def upload_shard(
    session: SessionDep,
    ctx: ContextDep,
    file: Annotated[UploadFile, File(description="a .tar of images: calibration or evaluation shard")],
    name: Annotated[str, Form()] = "",
) -> ArtifactPublic:
    art = artifacts.import_shard(
        session=session,
        signer=ctx.signer,
        store_dir=ctx.settings.artifacts_dir,
        store=ctx.store,
        max_bytes=ctx.settings.max_upload_bytes,
        src=file.file,
        name=name or file.filename or "",
    )
    return ArtifactPublic.model_validate(art)


@router.get("/artifacts/{artifact_id}", response_model=ArtifactPublic)
def get_artifact(session: SessionDep, artifact_id: str) -> ArtifactPublic:
    return ArtifactPublic.model_validate(crud.get_artifact(session=session, artifact_id=artifact_id))
