"""The artifact store interface: S3 presigned URLs made by botocore, checked offline against the
AWS Signature Version 4 rules computed here from the published algorithm (there is no S3 on
this machine); uploads through botocore's own Stubber; URLs stamped only onto the artifact
references of a command; settings that would hand out unusable URLs refused."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pytest
from botocore.stub import ANY, Stubber
from pydantic import ValidationError

from controller.core.config import get_settings
from controller.services.storage import (
    LocalStore,
    S3Store,
    secure_link_token,
    stamp_urls,
    store_from_settings,
)
from protos import fleet_pb2

KEY_ID, SECRET = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
SHA = "ab" * 32


def _client(endpoint: str | None = "http://127.0.0.1:9000", region: str = "us-east-1"):  # noqa: ANN202
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=KEY_ID,
        aws_secret_access_key=SECRET,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def _sigv4_signature(url: str, secret: str) -> str:
    """The SigV4 query-string signature of a presigned S3 GET, from the specification."""
    parts = urlsplit(url)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "X-Amz-Signature"]
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(params))
    canonical = "\n".join(
        ["GET", parts.path, canonical_query, f"host:{parts.netloc}", "", "host", "UNSIGNED-PAYLOAD"]
    )
    q = dict(params)
    amz_date = q["X-Amz-Date"]
    scope = q["X-Amz-Credential"].split("/", 1)[1]
    date, region, service, _ = scope.split("/")
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = f"AWS4{secret}".encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


def test_s3_presigned_url_is_a_valid_sigv4_get_of_the_key() -> None:
    store = S3Store("edgeloop-artifacts", prefix="/fleet/", client=_client())
    expires_at = int(time.time()) + 300
    url = store.url(f"{SHA}.onnx", device_id="dev-1", expires_at=expires_at)
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query))
    assert (parts.scheme, parts.netloc) == ("http", "127.0.0.1:9000")
    assert parts.path == f"/edgeloop-artifacts/fleet/{SHA}.onnx", "path-style bucket, then prefix/name"
    assert q["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256" and q["X-Amz-SignedHeaders"] == "host"
    assert q["X-Amz-Credential"].startswith(f"{KEY_ID}/") and q["X-Amz-Credential"].endswith(
        "/us-east-1/s3/aws4_request"
    )
    assert 295 <= int(q["X-Amz-Expires"]) <= 300
    assert q["X-Amz-Signature"] == _sigv4_signature(url, SECRET)
    assert q["X-Amz-Signature"] != _sigv4_signature(url, SECRET + "x"), "the check can fail"
    other = store.url(f"{SHA}.tar", device_id="dev-1", expires_at=expires_at)
    assert dict(parse_qsl(urlsplit(other).query))["X-Amz-Signature"] == _sigv4_signature(other, SECRET)


def test_s3_publish_uploads_once(tmp_path: Path) -> None:
    path = tmp_path / f"{SHA}.onnx"
    path.write_bytes(b"x" * 1000)
    client = _client()
    store = S3Store("bkt", prefix="p", client=client)
    with Stubber(client) as stub:
        stub.add_client_error("head_object", service_error_code="404", http_status_code=404,
                              expected_params={"Bucket": "bkt", "Key": f"p/{SHA}.onnx"})  # fmt: skip
        stub.add_response("put_object", {}, {"Bucket": "bkt", "Key": f"p/{SHA}.onnx", "Body": ANY,
                                             "ContentType": "application/octet-stream", "ChecksumAlgorithm": ANY})  # fmt: skip
        store.publish(path)
        stub.assert_no_pending_responses()
    with Stubber(client) as stub:  # already there with that size: no upload
        stub.add_response("head_object", {"ContentLength": 1000}, {"Bucket": "bkt", "Key": f"p/{SHA}.onnx"})
        store.publish(path)
        stub.assert_no_pending_responses()
    with Stubber(client) as stub:  # a refusal is not "missing": it is raised (the import fails)
        stub.add_client_error("head_object", service_error_code="403", http_status_code=403)
        with pytest.raises(Exception, match="403"):
            store.publish(path)


def test_secure_link_token_is_nginx_md5_base64url() -> None:
    # nginx: secure_link_md5 "$secure_link_expires$uri$arg_device secret", compared base64url
    import base64

    raw = hashlib.md5(b"1700000000/artifacts/x.onnxdev-1 s3cret").digest()
    assert secure_link_token("/artifacts/x.onnx", 1700000000, "dev-1", "s3cret") == base64.urlsafe_b64encode(
        raw
    ).decode().rstrip("=")
    store = LocalStore(Path("."), base_url="https://cdn.example/a/artifacts/", secret="s3cret")
    url = store.url("x.onnx", device_id="dev/1", expires_at=5)
    assert url.startswith("https://cdn.example/a/artifacts/x.onnx?md5=") and url.endswith(
        "&expires=5&device=dev%2F1"
    )
    assert secure_link_token("/a/artifacts/x.onnx", 5, "dev%2F1", "s3cret") in url, (
        "over the argument as sent"
    )
    assert LocalStore(Path(".")).url("x.onnx", device_id="d", expires_at=5) == "", "no nginx: gRPC only"


def _deploy_command() -> fleet_pb2.ControllerCommand:
    cmd = fleet_pb2.ControllerCommand(command_id="c1")
    cmd.deploy.artifact.CopyFrom(fleet_pb2.ArtifactRef(artifact_id="m", sha256=SHA, kind="model"))
    cmd.deploy.evaluation.CopyFrom(fleet_pb2.ArtifactRef(artifact_id="s", sha256="cd" * 32, kind="shard"))
    return cmd


def test_stamp_urls_covers_every_artifact_of_the_command_and_nothing_else() -> None:
    store = LocalStore(Path("."), base_url="http://h/artifacts", secret="k")
    cmd = stamp_urls(_deploy_command(), store, device_id="dev-9", ttl_s=120, now=1000.0)
    assert cmd.deploy.artifact.url.startswith(f"http://h/artifacts/{SHA}.onnx?")
    assert cmd.deploy.evaluation.url.startswith(f"http://h/artifacts/{'cd' * 32}.tar?")
    assert cmd.deploy.artifact.url_expires_at == 1120 and "device=dev-9" in cmd.deploy.artifact.url
    assert not cmd.deploy.HasField("calibration"), "an absent shard stays absent"
    switch = fleet_pb2.ControllerCommand(command_id="c2", switch=fleet_pb2.Switch(model_version="v"))
    assert stamp_urls(switch, store, device_id="d", ttl_s=60) == switch
    bench = fleet_pb2.ControllerCommand(command_id="c3")
    bench.benchmark.artifact.CopyFrom(fleet_pb2.ArtifactRef(artifact_id="m", sha256=SHA))
    assert stamp_urls(bench, store, device_id="d", ttl_s=60).benchmark.artifact.url


def test_a_store_that_cannot_sign_leaves_the_command_to_grpc() -> None:
    class Broken(LocalStore):
        def url(self, name: str, *, device_id: str, expires_at: int) -> str:
            raise RuntimeError("no credentials")

    cmd = stamp_urls(_deploy_command(), Broken(Path(".")), device_id="d", ttl_s=60)
    assert cmd.deploy.artifact.url == "" and cmd.deploy.artifact.artifact_id == "m"


def test_settings_refuse_half_configured_stores(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="go together"):
        get_settings(data_dir=tmp_path, artifact_url_base="http://h/artifacts")
    with pytest.raises(ValidationError, match="S3_BUCKET"):
        get_settings(data_dir=tmp_path, artifact_store="s3")
    with pytest.raises(ValidationError, match="real secret"):
        get_settings(data_dir=tmp_path, environment="production", api_token="a" * 20, enrollment_token="b" * 20,
                     artifact_url_base="http://h/artifacts", artifact_url_secret="change-me")  # fmt: skip
    with pytest.raises(ValidationError):
        get_settings(data_dir=tmp_path, artifact_store="ftp")
    local = store_from_settings(get_settings(data_dir=tmp_path))
    assert isinstance(local, LocalStore) and local.url("x", device_id="d", expires_at=1) == ""


def test_the_artifact_dir_opens_to_the_web_server_only_when_urls_are_served(tmp_path: Path) -> None:
    private = get_settings(data_dir=tmp_path / "a")
    private.ensure_dirs()
    assert (
        private.artifacts_dir.stat().st_mode & 0o777 == 0o700
        and private.artifacts_dir.parent == tmp_path / "a"
    )
    served = get_settings(data_dir=tmp_path / "b", artifact_dir=tmp_path / "public",
                          artifact_url_base="http://h/artifacts", artifact_url_secret="k")  # fmt: skip
    served.ensure_dirs()
    assert (
        served.artifacts_dir == tmp_path / "public" and served.artifacts_dir.stat().st_mode & 0o777 == 0o755
    )
    assert served.data_dir.stat().st_mode & 0o777 == 0o700 and served.keys_dir.stat().st_mode & 0o777 == 0o700
