"""Artifact bytes from an HTTP(S) URL (nginx with ``secure_link``, an S3 presigned URL, a CDN).

The controller puts an expiring URL into the artifact references of a command when its artifact
store hands them out (``ArtifactRef.url``). The server behind it needs no trust: the signature is
checked before a byte is fetched and the sha256 of every byte before the file gets its final
name, exactly as for the gRPC download (``agent.fleet.download``, whose ``.part`` file, checks
and hashing writer this module shares, so a transfer begun on one path resumes on the other).
A cut transfer resumes with a ``Range`` request from the bytes on disk. When the URL gives no
usable bytes (refused, expired, unreachable, wrong bytes, cut too often) ``UrlGivenUp`` says why
and the caller falls back to gRPC.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import httpcore
import httpx

from agent.fleet.download import (
    ArtifactRejected,
    DownloadInterrupted,
    DownloadResult,
    _hash_file,
    _HashingWriter,
    artifact_path,
    verify_signature,
)
from protos import fleet_pb2

log = logging.getLogger(__name__)
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
TIMEOUT = httpx.Timeout(30.0, connect=10.0)
BLOCK = 1 << 20  # bytes handed to the hashing writer at a time
PROGRESS_EVERY = 8 << 20  # on_progress at most this often (each becomes a status the controller stores)
MAX_INTERRUPTIONS = 3  # cuts in a row, each resumed, before the URL is given up for gRPC


def _large_reads() -> None:
    """httpcore reads an HTTP/1.1 body 64 KiB at a time (``READ_NUM_BYTES``, a class attribute and
    its only knob); artifact bodies are tens of MB, and 1 MiB reads cost about a third less CPU
    per byte here (a 128 MB fetch went from 76 to 111 MB/s on the loaded 2-vCPU VM). Only a
    larger ceiling per read: small answers are unchanged. Left alone if httpcore drops it."""
    connection = getattr(getattr(httpcore, "_sync", None), "http11", None)
    cls = getattr(connection, "HTTP11Connection", None)
    if cls is not None and getattr(cls, "READ_NUM_BYTES", 0) < BLOCK:
        cls.READ_NUM_BYTES = BLOCK


class UrlGivenUp(Exception):
    """The URL gave no usable bytes; the message is the reason (recorded with the command)."""


def _where(url: str) -> str:
    """The URL without its query (the signature is not for logs and status messages)."""
    return url.split("?", 1)[0]


def fetch_url(
    client: httpx.Client,
    ref: fleet_pb2.ArtifactRef,
    dest_dir: Path,
    public_key: bytes,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> DownloadResult:
    """One attempt: fetch ``ref.url`` into ``dest_dir/<sha256>.<ext>``, resuming a ``.part`` with
    ``Range: bytes=<size>-``, and verify it. Raises ``ArtifactRejected`` (bad signature, or bytes
    whose sha256 is not the signed one: deleted), ``DownloadInterrupted`` (cut mid-transfer: the
    bytes so far are kept) or ``UrlGivenUp`` (the server refused or cannot be reached)."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    final = artifact_path(dest_dir, ref)
    part = final.with_name(final.name + ".part")
    verify_signature(public_key, ref.sha256, ref.signature)
    if final.exists():
        digest = hashlib.sha256()
        _hash_file(final, digest)
        if digest.hexdigest() == ref.sha256:
            return DownloadResult(final, 0, 0, cached=True)
        final.unlink()
    digest = hashlib.sha256()
    offset = _hash_file(part, digest) if part.exists() else 0
    if ref.size_bytes and offset > ref.size_bytes:
        part.unlink()
        digest, offset = hashlib.sha256(), 0
    resumed_from, received = offset, 0
    if not ref.size_bytes or offset < ref.size_bytes:
        headers = {"Accept-Encoding": "identity"}  # the signed bytes, not a re-encoding of them
        if offset:
            headers["Range"] = f"bytes={offset}-"
        fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            with client.stream("GET", ref.url, headers=headers) as resp:
                if resp.status_code == 200 and offset:  # the server ignored the Range: start over
                    os.ftruncate(fd, 0)
                    digest, offset, resumed_from = hashlib.sha256(), 0, 0
                elif resp.status_code == 206:
                    _check_content_range(resp.headers.get("content-range", ""), offset, ref.size_bytes)
                elif resp.status_code == 416:
                    part.unlink(missing_ok=True)
                    raise UrlGivenUp(
                        f"{_where(ref.url)}: HTTP 416, the server holds fewer bytes than {offset}"
                    )
                elif resp.status_code != 200:
                    raise UrlGivenUp(f"{_where(ref.url)}: HTTP {resp.status_code} {resp.reason_phrase}")
                length = resp.headers.get("content-length")
                if ref.size_bytes and length is not None and offset + int(length) != ref.size_bytes:
                    raise UrlGivenUp(
                        f"{_where(ref.url)} serves {offset + int(length)} bytes, the signed artifact has {ref.size_bytes}"
                    )
                sink = _HashingWriter(fd, digest)
                pending: list[bytes] = []  # the transport's reads (up to 1 MiB), handed on per MiB
                held, reported = 0, offset
                try:
                    for data in resp.iter_raw():
                        if ref.size_bytes and offset + held + len(data) > ref.size_bytes:
                            raise ArtifactRejected(f"{_where(ref.url)} sends more bytes than the signed size")
                        pending.append(data)
                        held += len(data)
                        if held >= BLOCK:
                            sink.put(b"".join(pending))
                            offset, received, pending, held = offset + held, received + held, [], 0
                            if on_progress is not None and offset - reported >= PROGRESS_EVERY:
                                on_progress(offset, ref.size_bytes)
                                reported = offset
                except httpx.TransportError as exc:
                    raise DownloadInterrupted(
                        f"{_where(ref.url)} broke at {offset + held} bytes: {type(exc).__name__}"
                    ) from exc
                finally:
                    if pending:  # also on a cut: every byte that arrived counts for the resume
                        sink.put(b"".join(pending))
                        offset, received = offset + held, received + held
                    sink.close()  # what arrived is on disk and hashed before we go on
                if on_progress is not None:
                    on_progress(offset, ref.size_bytes)
            os.fsync(fd)
        except httpx.TransportError as exc:  # before the body: refused, unreachable, timed out
            raise UrlGivenUp(f"{_where(ref.url)}: {type(exc).__name__}: {exc}") from exc
        except ArtifactRejected:
            part.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
    if ref.size_bytes and offset < ref.size_bytes:
        raise DownloadInterrupted(f"{_where(ref.url)} ended at {offset}/{ref.size_bytes} bytes")
    if digest.hexdigest() != ref.sha256:
        part.unlink(missing_ok=True)
        raise ArtifactRejected(
            f"sha256 mismatch from {_where(ref.url)}: signed {ref.sha256[:12]}…, "
            f"received {digest.hexdigest()[:12]}…; deleted"
        )
    os.replace(part, final)
    return DownloadResult(final, resumed_from, received)


def _check_content_range(header: str, offset: int, size: int) -> None:
    m = _CONTENT_RANGE.fullmatch(header.strip())
    if m is None or int(m.group(1)) != offset:
        raise UrlGivenUp(f"answer to a range from {offset} has Content-Range {header!r}")
    if size and m.group(3) != "*" and int(m.group(3)) != size:
        raise UrlGivenUp(f"the server's file has {m.group(3)} bytes, the signed artifact {size}")


class UrlFetcher:
    """The agent's HTTP client (connections kept), and when to give a URL up for gRPC."""

    def __init__(
        self, client: httpx.Client | None = None, max_interruptions: int = MAX_INTERRUPTIONS
    ) -> None:
        _large_reads()
        self.client = client or httpx.Client(timeout=TIMEOUT, follow_redirects=True)
        self.max_interruptions = max_interruptions

    def fetch(
        self,
        ref: fleet_pb2.ArtifactRef,
        dest_dir: Path,
        public_key: bytes,
        *,
        on_progress: Callable[[int, int], None] | None = None,
    ) -> DownloadResult:
        """``ref`` from its URL, resuming each cut. Raises ``UrlGivenUp`` with the reason when the
        URL yields no verified file (wrong bytes were deleted; a partial of good length is kept
        for gRPC to resume), ``ArtifactRejected`` when the signature itself is bad."""
        verify_signature(public_key, ref.sha256, ref.signature)
        cuts = 0
        while True:
            try:
                result = fetch_url(self.client, ref, dest_dir, public_key, on_progress=on_progress)
            except DownloadInterrupted as exc:
                cuts += 1
                log.warning("%s; resuming (%d/%d)", exc, cuts, self.max_interruptions)
                if cuts >= self.max_interruptions:
                    raise UrlGivenUp(f"cut {cuts} times, last: {exc}") from exc
                continue
            except ArtifactRejected as exc:
                raise UrlGivenUp(str(exc)) from exc
            return result

    def close(self) -> None:
        self.client.close()
