"""Where artifact bytes live for agents to fetch over HTTP(S), behind one small interface.

The controller always keeps the content-addressed copy in its data directory
(``<data_dir>/artifacts/<sha256>.<ext>``): imports write it, the gRPC ``DownloadArtifact`` serves
it (the fallback for small fleets, and when a URL fetch fails). A store adds a second place the
same bytes can come from, and hands out expiring URLs to them:

- ``LocalStore``: that directory, served by an HTTP server the operator runs next to the
  controller (nginx with ``secure_link``, ``deploy/nginx/``). URLs are signed with nginx's
  ``secure_link_md5`` scheme; without a base URL and secret it hands out none (gRPC only, the
  default).
- ``S3Store``: an S3-compatible bucket (AWS S3, MinIO, Ceph RGW, ...). Imports upload the file;
  URLs are S3 presigned GETs made by botocore (AWS Signature Version 4).

The server behind a URL needs no trust: the agent checks the sha256 and the controller's ed25519
signature as it does for gRPC bytes. A URL is put only into a command on the authenticated stream
of the device it is for (``stamp_urls``), with a short expiry, so it carries no more than the
download permission that command already gives.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlsplit

from controller.core.config import Settings
from protos import fleet_pb2

log = logging.getLogger(__name__)


class ArtifactStore(Protocol):
    """A place agents can fetch artifact bytes from by URL."""

    kind: str

    def publish(self, path: Path) -> None:
        """Make the stored file (named ``<sha256>.<ext>``) reachable; a no-op when it already is."""
        ...

    def url(self, name: str, *, device_id: str, expires_at: int) -> str:
        """A URL for ``name`` valid until ``expires_at`` (unix seconds); "" when there is none."""
        ...


def secure_link_token(uri: str, expires_at: int, device_id: str, secret: str) -> str:
    """nginx ``secure_link_md5 "$secure_link_expires$uri$arg_device <secret>"``: the MD5 of that
    string, base64url without padding (what nginx compares ``$arg_md5`` with)."""
    raw = hashlib.md5(f"{expires_at}{uri}{device_id} {secret}".encode(), usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class LocalStore:
    """The controller's artifact directory, optionally served by nginx with ``secure_link``."""

    kind = "local"

    def __init__(self, directory: Path, *, base_url: str = "", secret: str = "") -> None:
        if bool(base_url) != bool(secret):
            raise ValueError("an artifact URL base needs its secure_link secret, and the other way round")
        self.directory = directory
        self.base_url = base_url.rstrip("/")
        self.secret = secret

    def publish(self, path: Path) -> None:
        """The import already wrote the file where nginx serves it."""

    def url(self, name: str, *, device_id: str, expires_at: int) -> str:
        if not self.base_url:
            return ""
        uri = f"{urlsplit(self.base_url).path}/{name}"
        device = quote(device_id, safe="")  # nginx's $arg_device is the argument as sent, still encoded
        token = secure_link_token(uri, expires_at, device, self.secret)
        return f"{self.base_url}/{name}?md5={token}&expires={expires_at}&device={device}"


class S3Store:
    """An S3-compatible bucket: imports upload there, agents get presigned GET URLs.

    Credentials come from botocore's usual chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
    a profile, an instance role); ``client`` lets tests pass a client of their own."""

    kind = "s3"

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise ValueError("the S3 artifact store needs a bucket (EDGELOOP_S3_BUCKET)")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        if client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:  # an optional extra: pip install edgeloop[s3]
                raise ValueError("the S3 artifact store needs boto3 (pip install 'edgeloop[s3]')") from exc
            # path-style addressing for an endpoint of one's own (MinIO and friends), SigV4 always
            style = "path" if endpoint_url else "auto"
            client = boto3.client(
                "s3",
                endpoint_url=endpoint_url or None,
                region_name=region or None,
                config=Config(signature_version="s3v4", s3={"addressing_style": style}),
            )
        self.client = client

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def publish(self, path: Path) -> None:
        from botocore.exceptions import ClientError

        key = self.key(path.name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
            if int(head.get("ContentLength", -1)) == path.stat().st_size:
                return
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("404", "NoSuchKey", "NotFound"):
                raise
        log.info("uploading %s to s3://%s/%s", path.name, self.bucket, key)
        self.client.upload_file(
            str(path), self.bucket, key, ExtraArgs={"ContentType": "application/octet-stream"}
        )

    def url(self, name: str, *, device_id: str, expires_at: int) -> str:
        """A SigV4 presigned GET. It cannot name the device (S3 checks no such argument): only
        the short expiry and its place in that device's command bound it."""
        expires_in = max(1, expires_at - int(time.time()))
        return str(
            self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self.key(name)}, ExpiresIn=expires_in
            )
        )


def store_from_settings(settings: Settings) -> ArtifactStore:
    """The store the settings name (``EDGELOOP_ARTIFACT_STORE``: local, the default, or s3)."""
    if settings.artifact_store == "s3":
        return S3Store(
            settings.s3_bucket or "",
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            region=settings.s3_region,
        )
    return LocalStore(
        settings.artifacts_dir,
        base_url=settings.artifact_url_base or "",
        secret=settings.artifact_url_secret or "",
    )


def artifact_name(ref: fleet_pb2.ArtifactRef) -> str:
    """The stored file's name (what ``services.artifacts`` writes and agents cache under)."""
    return f"{ref.sha256}.{'tar' if ref.kind == 'shard' else 'onnx'}"


def stamp_urls(
    command: fleet_pb2.ControllerCommand,
    store: ArtifactStore,
    *,
    device_id: str,
    ttl_s: int,
    now: float | None = None,
) -> fleet_pb2.ControllerCommand:
    """Give every artifact a command names a URL that expires ``ttl_s`` from now, for
    ``device_id``. Called as the command goes onto that device's stream, so a resent command
    gets fresh URLs and no URL is ever stored. A store that fails to make one leaves the ref to
    gRPC and says why in the log."""
    body_name = command.WhichOneof("body")
    if body_name is None:
        return command
    body = getattr(command, body_name)
    expires_at = int((time.time() if now is None else now) + ttl_s)
    for field, _ in body.ListFields():
        if field.message_type is not fleet_pb2.ArtifactRef.DESCRIPTOR:
            continue
        ref = getattr(body, field.name)
        if not ref.artifact_id or not ref.sha256:
            continue
        try:
            url = store.url(artifact_name(ref), device_id=device_id, expires_at=expires_at)
        except Exception:  # a presigner without credentials, say: the agent still has gRPC
            log.warning("no URL for artifact %s (%s store)", ref.artifact_id, store.kind, exc_info=True)
            continue
        if url:
            ref.url, ref.url_expires_at = url, expires_at
    return command
