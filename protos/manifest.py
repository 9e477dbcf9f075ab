"""Read, write and check artifact manifests (the JSON form of ``artifact.proto``'s Manifest).

Lives beside the proto because the trainer writes manifests, the agent and controller read
them, and neither may import the other. Unknown JSON fields are refused, so a typo in a
hand-written manifest is an error that names the field, not a silently ignored value.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from google.protobuf import json_format

from protos import artifact_pb2

SCHEMA_VERSION = 1
Manifest = artifact_pb2.Manifest


class ManifestError(ValueError):
    """A manifest that cannot be parsed or does not match its ONNX file (see
    ``protos.onnx_io.verify_onnx_matches``)."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks so large artifacts do not fill memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def manifest_from_json(text: str) -> artifact_pb2.Manifest:
    manifest = artifact_pb2.Manifest()
    try:
        json_format.Parse(text, manifest, ignore_unknown_fields=False)
    except json_format.ParseError as exc:
        raise ManifestError(f"invalid manifest: {exc}") from exc
    return manifest


def manifest_to_json(manifest: artifact_pb2.Manifest) -> str:
    return str(
        json_format.MessageToJson(manifest, preserving_proto_field_name=True, indent=2, sort_keys=True)
    )


def load_manifest(path: str | Path) -> artifact_pb2.Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    return manifest_from_json(path.read_text(encoding="utf-8"))


def save_manifest(manifest: artifact_pb2.Manifest, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(manifest_to_json(manifest) + "\n", encoding="utf-8")
    return path
