"""Artifact download: resumable chunks, sha256 and ed25519 checks before anything is used.

The signature (ed25519 over the raw sha256 digest, by the controller's key received at Register)
is checked before a byte is fetched; the bytes are hashed as they arrive and the file only gets
its final name when the digest matches the signed one. A partial file (``.part``) is resumed from
its size; a refused artifact is deleted, and nothing the device is running is touched.

A digest mismatch (``CorruptDownload``: a damaged partial, bytes flipped on the way) is not final:
``fetch_verified`` discards the file and fetches it again from byte 0, up to ``attempts`` times,
then fails with the reason. A bad signature is final at once (no retry can fix it).
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from protos import fleet_pb2, fleet_pb2_grpc

log = logging.getLogger(__name__)
T = TypeVar("T")


class ArtifactRejected(Exception):
    """The artifact failed its signature or digest check; it was deleted."""


class CorruptDownload(ArtifactRejected):
    """The received bytes do not hash to the signed sha256; the file was deleted (a retry starts at 0)."""


class DownloadInterrupted(Exception):
    """The transfer stopped early; the partial file is kept for a resume."""


@dataclass
class DownloadResult:
    path: Path
    resumed_from: int
    bytes_received: int
    cached: bool = False


class _HashingWriter:
    """Hashes and appends chunks on two helper threads, in parallel with each other and with the
    receiver (hashlib and os.write release the GIL for large buffers)."""

    def __init__(self, fd: int, digest: hashlib._Hash, depth: int = 8, sync_every: int = 32 << 20) -> None:
        self.fd, self.digest = fd, digest
        self.unsynced, self.sync_every = 0, sync_every
        self.error: BaseException | None = None
        self.queues: list[queue.Queue[bytes | memoryview | None]] = [
            queue.Queue(maxsize=depth),
            queue.Queue(maxsize=depth),
        ]
        self.threads = [
            threading.Thread(
                target=self._loop, args=(self.queues[0], self._hash), name="artifact-hash", daemon=True
            ),
            threading.Thread(
                target=self._loop, args=(self.queues[1], self._write), name="artifact-write", daemon=True
            ),
        ]
        for t in self.threads:
            t.start()

    def _hash(self, data: bytes | memoryview) -> None:
        self.digest.update(data)

    def _write(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.unsynced += len(data)
        if self.unsynced >= self.sync_every:
            os.fdatasync(self.fd)  # write back while the next chunks arrive; the last fsync is short
            self.unsynced = 0

    def _loop(self, q: queue.Queue, work: Callable[[bytes | memoryview], None]) -> None:
        while (data := q.get()) is not None:
            if self.error is None:
                try:
                    work(data)
                except BaseException as exc:  # reported by put() / close()
                    self.error = exc

    def put(self, data: bytes | memoryview) -> None:
        if self.error is not None:
            raise self.error
        for q in self.queues:
            q.put(data)

    def close(self) -> None:
        for q in self.queues:
            q.put(None)
        for t in self.threads:
            t.join()
        if self.error is not None:
            raise self.error


def verify_signature(public_key: bytes, sha256_hex: str, signature: bytes) -> None:
    if not public_key:
        raise ArtifactRejected("no controller public key: register first")
    try:
        digest = bytes.fromhex(sha256_hex)
    except ValueError as exc:
        raise ArtifactRejected(f"malformed sha256 {sha256_hex!r}") from exc
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except (InvalidSignature, ValueError) as exc:
        raise ArtifactRejected(f"bad signature on artifact {sha256_hex[:12]}…") from exc


def _hash_file(path: Path, digest: hashlib._Hash) -> int:
    size = 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size


def artifact_path(dest_dir: Path, ref: fleet_pb2.ArtifactRef) -> Path:
    suffix = ".tar" if ref.kind == "shard" else ".onnx"
    return dest_dir / f"{ref.sha256}{suffix}"


def download_artifact(
    stub: fleet_pb2_grpc.FleetServiceStub,
    ref: fleet_pb2.ArtifactRef,
    dest_dir: Path,
    public_key: bytes,
    *,
    metadata: tuple[tuple[str, str], ...] = (),
    chunk_size: int = 0,
    on_progress: Callable[[int, int], None] | None = None,
    timeout: float | None = None,
) -> DownloadResult:
    """Fetch ``ref`` into ``dest_dir/<sha256>.<ext>`` (resuming a ``.part``) and verify it.

    ``stub`` is ``agent.fleet.client.FleetStub`` (chunks as zero-copy views) or the generated
    stub (ArtifactChunk messages); both give chunks with the same fields."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = artifact_path(dest_dir, ref)
    part = final.with_name(final.name + ".part")
    try:
        verify_signature(public_key, ref.sha256, ref.signature)
    except ArtifactRejected:
        part.unlink(missing_ok=True)
        final.unlink(missing_ok=True)
        raise
    if final.exists():
        digest = hashlib.sha256()
        _hash_file(final, digest)
        if digest.hexdigest() == ref.sha256:
            return DownloadResult(final, 0, 0, cached=True)
        log.warning("cached %s is corrupt; fetching again", final.name)
        final.unlink()
    digest = hashlib.sha256()
    offset = _hash_file(part, digest) if part.exists() else 0
    if ref.size_bytes and offset > ref.size_bytes:
        part.unlink()
        digest, offset = hashlib.sha256(), 0
    resumed_from, received = offset, 0
    if resumed_from:
        log.info("resuming %s at %d/%d bytes", final.name, offset, ref.size_bytes)
    request = fleet_pb2.DownloadRequest(artifact_id=ref.artifact_id, offset=offset, chunk_size=chunk_size)
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sink = _HashingWriter(fd, digest)  # hashing and writing overlap with receiving the next chunk
    try:
        call = stub.DownloadArtifact(request, metadata=metadata, timeout=timeout)
        try:
            for chunk in call:
                if chunk.sha256 != ref.sha256 or (ref.size_bytes and chunk.total_size != ref.size_bytes):
                    raise ArtifactRejected("the controller serves different bytes than the signed reference")
                if chunk.offset != offset:
                    raise DownloadInterrupted(f"chunk at {chunk.offset}, expected {offset}")
                data = chunk.data  # read once: a generated message copies the payload on every access
                if data:
                    sink.put(data)
                    offset += len(data)
                    received += len(data)
                if on_progress is not None:
                    on_progress(offset, chunk.total_size)
        except grpc.RpcError as exc:
            raise DownloadInterrupted(
                f"download of {ref.artifact_id} broke at {offset} bytes: {exc.code().name}"
            ) from exc
        finally:
            call.cancel()  # no-op when complete; stops the sender when we bail out early
            sink.close()  # everything received so far is on disk (and hashed) before we go on
        os.fsync(fd)
    except ArtifactRejected:
        part.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)
    if ref.size_bytes and offset < ref.size_bytes:
        raise DownloadInterrupted(f"stream ended at {offset}/{ref.size_bytes} bytes")
    if digest.hexdigest() != ref.sha256:
        part.unlink(missing_ok=True)
        raise CorruptDownload(
            f"sha256 mismatch: signed {ref.sha256[:12]}…, received {digest.hexdigest()[:12]}…"
            + (f" (resumed at {resumed_from} bytes)" if resumed_from else "")
            + "; deleted"
        )
    os.replace(part, final)
    return DownloadResult(final, resumed_from, received)


def fetch_verified(download: Callable[[], T], *, attempts: int = 3, what: str = "") -> T:
    """Run ``download`` (one ``download_artifact`` call) until its bytes verify: a corrupt result
    was deleted by it, so the next attempt starts from byte 0. Raises ``CorruptDownload`` naming
    the attempts and the last reason once ``attempts`` are spent; other errors pass through."""
    for attempt in range(1, attempts + 1):
        try:
            return download()
        except CorruptDownload as exc:
            if attempt == attempts:
                raise CorruptDownload(
                    f"{exc} ({what or 'download'}: {attempts} attempts failed verification)"
                ) from exc
            log.warning(
                "%s failed verification (%s); fetching again from 0 (%d/%d)", what, exc, attempt + 1, attempts
            )
    raise AssertionError("unreachable")  # attempts >= 1
