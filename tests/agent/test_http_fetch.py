"""agent/fleet/http_fetch.py against servers that misbehave: the standard library's HTTP server
(which ignores Range, so a resume starts over and is still verified), one that sends more bytes
than the signed size, one that lies in Content-Range, and URLs that cannot be fetched at all.
The nginx cases (signed URLs, a cut resumed with Range) are in tests/controller/test_artifact_urls.py."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from agent.fleet.http_fetch import UrlFetcher, UrlGivenUp, fetch_url
from protos import fleet_pb2

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()
KEY = Ed25519PrivateKey.generate()
PUBLIC = KEY.public_key().public_bytes_raw()


class Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


class Liar(Quiet):
    """Answers every GET with 206 and the Content-Range of its choice, or a body longer than asked."""

    mode = "long"

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.mode == "long":
            body = DATA + b"extra"
            self.send_response(200)
        else:
            body = DATA[10:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 10-{len(DATA) - 1}/{len(DATA)}")
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, ThreadingHTTPServer]]:
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / f"{SHA}.onnx").write_bytes(DATA)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Quiet, directory=str(tmp_path / "www")))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def _ref(url: str) -> fleet_pb2.ArtifactRef:
    return fleet_pb2.ArtifactRef(artifact_id="a", sha256=SHA, size_bytes=len(DATA), kind="model",
                                 signature=KEY.sign(bytes.fromhex(SHA)), url=url)  # fmt: skip


def test_a_server_that_ignores_range_restarts_the_file_and_it_still_verifies(server, tmp_path: Path) -> None:
    base, _ = server
    dest = tmp_path / "agent"
    dest.mkdir()
    (dest / f"{SHA}.onnx.part").write_bytes(DATA[:1000])  # a partial from an earlier attempt
    with httpx.Client() as client:
        result = fetch_url(client, _ref(f"{base}/{SHA}.onnx"), dest, PUBLIC)
    assert result.resumed_from == 0 and result.bytes_received == len(DATA)
    assert result.path.read_bytes() == DATA


def test_a_stale_partial_with_wrong_bytes_is_deleted_not_used(server, tmp_path: Path) -> None:
    """A partial longer than the signed size cannot be a prefix of the artifact: dropped, fetched anew."""
    base, _ = server
    dest = tmp_path / "agent"
    dest.mkdir()
    (dest / f"{SHA}.onnx.part").write_bytes(b"\0" * (len(DATA) + 1))  # longer than the artifact
    with httpx.Client() as client:
        result = fetch_url(client, _ref(f"{base}/{SHA}.onnx"), dest, PUBLIC)
    assert result.resumed_from == 0 and result.path.read_bytes() == DATA


@pytest.mark.parametrize("mode", ["long", "range"])
def test_a_server_that_sends_other_bytes_than_asked_is_refused(mode: str, tmp_path: Path) -> None:
    handler = type("L", (Liar,), {"mode": mode})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        ref = _ref(f"http://127.0.0.1:{httpd.server_port}/{SHA}.onnx")
        with pytest.raises(
            UrlGivenUp, match="more bytes than the signed size" if mode == "long" else "Content-Range"
        ):
            UrlFetcher().fetch(ref, tmp_path / "agent", PUBLIC)
        assert not (tmp_path / "agent" / f"{SHA}.onnx").exists()
        if mode == "long":
            assert not (tmp_path / "agent" / f"{SHA}.onnx.part").exists(), "the bad bytes are deleted"
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_unfetchable_urls_are_given_up_with_the_reason(server, tmp_path: Path) -> None:
    base, httpd = server
    fetcher = UrlFetcher()
    with pytest.raises(UrlGivenUp, match="HTTP 404"):
        fetcher.fetch(_ref(f"{base}/{'0' * 64}.onnx"), tmp_path / "a", PUBLIC)
    with pytest.raises(UrlGivenUp, match="UnsupportedProtocol"):
        fetcher.fetch(_ref(f"file:///etc/passwd#{SHA}"), tmp_path / "a", PUBLIC)
    port = httpd.server_port
    httpd.shutdown()
    httpd.server_close()
    with pytest.raises(UrlGivenUp, match="ConnectError"):
        fetcher.fetch(_ref(f"http://127.0.0.1:{port}/{SHA}.onnx"), tmp_path / "a", PUBLIC)
    fetcher.close()


def test_the_reason_never_carries_the_url_signature(server, tmp_path: Path) -> None:
    base, _ = server
    with pytest.raises(UrlGivenUp) as info:
        UrlFetcher().fetch(_ref(f"{base}/{'1' * 64}.onnx?md5=SECRETSIG&expires=1"), tmp_path / "a", PUBLIC)
    assert "HTTP 404" in str(info.value) and "SECRETSIG" not in str(info.value)


def test_a_cached_verified_file_is_not_fetched_again(tmp_path: Path) -> None:
    dest = tmp_path / "agent"
    dest.mkdir()
    (dest / f"{SHA}.onnx").write_bytes(DATA)
    result = UrlFetcher().fetch(_ref(f"http://127.0.0.1:1/{SHA}.onnx"), dest, PUBLIC)  # unreachable
    assert result.cached and result.bytes_received == 0
