"""Importing artifacts: an ONNX model with its manifest (ours or a foreign one), or a data shard.

Bytes are copied into the content-addressed store ``<data_dir>/artifacts/<sha256>.<ext>`` while
hashing; a manifest whose sha256 disagrees with the bytes is refused. A foreign manifest may leave
``sha256``, ``inputs``, ``outputs``, ``opset`` and ``size_bytes`` empty: they are filled from the
file. Every stored artifact is signed with the controller's key, and published to the artifact
store agents fetch URLs from, when there is one (``services.storage``; an S3 bucket uploads it).
A failure leaves neither a row nor a stray file behind.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import tarfile
import tempfile
from pathlib import Path
from typing import BinaryIO

from google.protobuf import json_format
from sqlmodel import Session

from controller import crud
from controller.errors import Conflict, InvalidInput, TooLarge
from controller.models import Artifact, ArtifactKind, ModelVersion
from controller.services.signing import Signer
from controller.services.storage import ArtifactStore
from protos import artifact_pb2, fleet_pb2
from protos.manifest import ManifestError, manifest_from_json, manifest_to_json

log = logging.getLogger(__name__)
_BLOCK = 1 << 20


def _store(
    src: BinaryIO | Path, store_dir: Path, ext: str, max_bytes: int | None = None
) -> tuple[Path, str, int, bool]:
    """Copy into the store while hashing, block by block (never the whole file in memory), up to
    ``max_bytes``: beyond it ``TooLarge`` and nothing is kept. Returns (path, sha256, size,
    created_new_file)."""
    store_dir.mkdir(parents=True, exist_ok=True)
    digest, size = hashlib.sha256(), 0
    fd, tmp_name = tempfile.mkstemp(dir=store_dir, prefix=".incoming-")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            fh = open(src, "rb") if isinstance(src, Path) else src  # noqa: SIM115
            try:
                while block := fh.read(_BLOCK):
                    size += len(block)
                    if max_bytes is not None and size > max_bytes:
                        raise TooLarge(
                            f"upload larger than the limit of {max_bytes} bytes (max_upload_bytes)"
                        )
                    digest.update(block)
                    out.write(block)
            finally:
                if isinstance(src, Path):
                    fh.close()
        sha = digest.hexdigest()
        final = store_dir / f"{sha}.{ext}"
        if final.exists():
            tmp.unlink()
            return final, sha, size, False
        # readable by the web server that serves the store (nginx's user, not the controller's):
        # the bytes are signed, not secret; mkstemp made the file 0600
        tmp.chmod(0o644)
        tmp.replace(final)
        return final, sha, size, True
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fill_from_onnx(manifest: artifact_pb2.Manifest, path: Path) -> None:
    """Check the file is an ONNX graph the manifest does not contradict; fill what a foreign
    manifest left out (the rules: ``protos.onnx_io``)."""
    if importlib.util.find_spec("onnx") is None:  # the controller extra does not require onnx
        log.warning("onnx not installed: %s not parsed", path.name)  # then we trust the manifest
        return
    from protos.onnx_io import OnnxReadError, graph_specs, load_graph, opset_of, verify_onnx_matches

    try:
        model = load_graph(path)
    except OnnxReadError as exc:
        raise InvalidInput(str(exc)) from exc
    inputs, outputs = graph_specs(model)
    try:
        verify_onnx_matches(manifest, inputs, outputs)
    except ManifestError as exc:
        raise InvalidInput(str(exc)) from exc
    if not manifest.inputs:
        manifest.inputs.extend(inputs)
    if not manifest.outputs:
        manifest.outputs.extend(outputs)
    if not manifest.opset:
        manifest.opset = opset_of(model)


def import_model(
    *,
    session: Session,
    signer: Signer,
    store_dir: Path,
    onnx_src: BinaryIO | Path,
    manifest_json: str,
    source: str = "import",
    store: ArtifactStore | None = None,
    max_bytes: int | None = None,
) -> ModelVersion:
    """Store, check, sign and register one model version. Raises InvalidInput or Conflict."""
    try:
        manifest = manifest_from_json(manifest_json)
    except ManifestError as exc:
        raise InvalidInput(str(exc)) from exc
    if not manifest.name or not manifest.version:
        raise InvalidInput("manifest needs 'name' and 'version'")
    if crud.find_model_version(session=session, version=manifest.version) is not None:
        raise Conflict(f"model version {manifest.version!r} already exists")
    if manifest.lineage.parent_version and not crud.find_model_version(
        session=session, version=manifest.lineage.parent_version
    ):
        log.info("parent %s of %s is not registered here", manifest.lineage.parent_version, manifest.version)
    path, sha, size, created = _store(onnx_src, store_dir, "onnx", max_bytes)
    try:
        if manifest.sha256 and manifest.sha256 != sha:
            raise InvalidInput(
                f"sha256 mismatch: manifest says {manifest.sha256[:16]}…, the file is {sha[:16]}…"
            )
        if manifest.size_bytes and manifest.size_bytes != size:
            raise InvalidInput(
                f"size mismatch: manifest says {manifest.size_bytes} bytes, the file has {size}"
            )
        _fill_from_onnx(manifest, path)
        manifest.sha256, manifest.size_bytes = sha, size
        manifest.onnx_file = manifest.onnx_file or "model.onnx"
        manifest.schema_version = manifest.schema_version or 1
        if not manifest.lineage.action:
            manifest.lineage.action = "import"
        artifact = Artifact(
            kind=ArtifactKind.model,
            name=manifest.version,
            sha256=sha,
            size_bytes=size,
            path=str(path),
            signature=signer.sign_sha256(sha),
            manifest_json=manifest_to_json(manifest),
        )
        session.add(artifact)
        session.flush()
        mv = ModelVersion(
            name=manifest.name,
            version=manifest.version,
            task=manifest.task or "classification",
            parent_version=manifest.lineage.parent_version,
            source=source,
            artifact_id=artifact.id,
            lineage=json_format.MessageToDict(manifest.lineage, preserving_proto_field_name=True),
            metrics=dict(manifest.metrics),
            labels=list(manifest.labels),
            precision=manifest.precision or "fp32",
        )
        session.add(mv)
        session.flush()
        if store is not None:
            store.publish(path)
        return mv
    except BaseException:
        if created:
            path.unlink(missing_ok=True)
        raise


def import_shard(
    *,
    session: Session,
    signer: Signer,
    store_dir: Path,
    src: BinaryIO | Path,
    name: str,
    store: ArtifactStore | None = None,
    max_bytes: int | None = None,
) -> Artifact:
    """A .tar of images (calibration or evaluation shard)."""
    path, sha, size, created = _store(src, store_dir, "tar", max_bytes)
    try:
        if not tarfile.is_tarfile(path):
            raise InvalidInput("a shard must be a .tar archive")
        artifact = Artifact(
            kind=ArtifactKind.shard,
            name=name or sha[:12],
            sha256=sha,
            size_bytes=size,
            path=str(path),
            signature=signer.sign_sha256(sha),
        )
        session.add(artifact)
        session.flush()
        if store is not None:
            store.publish(path)
        return artifact
    except BaseException:
        if created:
            path.unlink(missing_ok=True)
        raise


def artifact_ref(artifact: Artifact, model_version: str = "") -> fleet_pb2.ArtifactRef:
    return fleet_pb2.ArtifactRef(
        artifact_id=artifact.id,
        model_version=model_version,
        sha256=artifact.sha256,
        size_bytes=artifact.size_bytes,
        signature=bytes.fromhex(artifact.signature),
        manifest_json=artifact.manifest_json,
        kind=artifact.kind.value,
    )
