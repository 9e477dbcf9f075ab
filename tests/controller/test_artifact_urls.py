"""Artifact bytes from a real nginx (Debian's, started per test with deploy/nginx's config): signed
URLs checked by ``secure_link`` (altered or expired refused), a transfer cut by a TCP proxy and
resumed with a Range request, a byte tampered on the server refused by sha256, and a fleet agent
deployed end to end with its bytes from nginx (the controller's gRPC serves none of them), or
from gRPC with the reason recorded when the URL's bytes are bad."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from ctl_helpers import make_controller, manifest_json, start_agent, write_onnx
from nginx_helpers import CuttingProxy, needs_nginx, start_nginx
from sqlmodel import select

from agent.fleet.download import ArtifactRejected, DownloadInterrupted
from agent.fleet.http_fetch import UrlFetcher, UrlGivenUp, fetch_url
from controller import crud
from controller.models import Command, CommandKind, RolloutState
from controller.services.storage import LocalStore
from protos import fleet_pb2

pytestmark = needs_nginx
SECRET = "nginx-test-secret"
TOKEN = "test-enrollment-token"


@pytest.fixture
def served(tmp_path: Path):  # noqa: ANN201 - (nginx, data root, signed ref factory)
    """nginx over ``tmp/mirror/artifacts`` and one signed 2 MiB artifact in it."""
    root = tmp_path / "mirror"
    (root / "artifacts").mkdir(parents=True)
    data = os.urandom(2 << 20)
    sha = hashlib.sha256(data).hexdigest()
    (root / "artifacts" / f"{sha}.onnx").write_bytes(data)
    key = Ed25519PrivateKey.generate()
    ng = start_nginx(tmp_path / "nginx", root, SECRET)
    store = LocalStore(root / "artifacts", base_url=ng.base_url, secret=SECRET)

    def ref(device: str = "dev-1", ttl: int = 60, base: str = "") -> fleet_pb2.ArtifactRef:
        r = fleet_pb2.ArtifactRef(
            artifact_id="a1",
            sha256=sha,
            size_bytes=len(data),
            signature=key.sign(bytes.fromhex(sha)),
            kind="model",
        )
        r.url = store.url(f"{sha}.onnx", device_id=device, expires_at=int(time.time()) + ttl)
        if base:
            r.url = r.url.replace(ng.base_url, base)
        return r

    public = key.public_key().public_bytes_raw()
    try:
        yield ng, root, data, ref, public
    finally:
        ng.stop()


def test_signed_url_serves_ranges_and_altered_or_expired_urls_are_refused(served) -> None:
    ng, _, data, ref, _ = served
    url = ref().url
    assert httpx.get(url).content == data
    part = httpx.get(url, headers={"Range": "bytes=1000-"})
    assert part.status_code == 206 and part.content == data[1000:]
    assert part.headers["content-range"] == f"bytes 1000-{len(data) - 1}/{len(data)}"
    assert httpx.get(url.replace("device=dev-1", "device=dev-2")).status_code == 403, "another device"
    assert httpx.get(url.replace("expires=", "expires=1")).status_code == 403, "a later expiry, same md5"
    md5 = url.split("md5=")[1].split("&")[0]
    # the first character (the last carries 4 padding bits a base64 decoder may ignore)
    assert httpx.get(url.replace(md5, ("A" if md5[0] != "A" else "B") + md5[1:])).status_code == 403
    assert httpx.get(url.split("?")[0]).status_code == 403, "no signature at all"
    assert httpx.get(ref(ttl=-5).url).status_code == 410, "expired"
    assert httpx.get(ref(device="dev 1/ä&x=y").url).content == data, "an id that needs URL-encoding"
    wrong = LocalStore(Path("."), base_url=ng.base_url, secret="not-the-secret")
    name = url.split("/artifacts/")[1].split("?")[0]
    assert httpx.get(wrong.url(name, device_id="dev-1", expires_at=int(time.time()) + 60)).status_code == 403
    # the data dir's other files (the importer's temporaries, the DB) are never served, signed or not
    other = LocalStore(Path("."), base_url=ng.base_url, secret=SECRET)
    assert httpx.get(
        other.url("../edgeloop.db", device_id="d", expires_at=int(time.time()) + 60)
    ).status_code in (
        400,
        404,
    )


def test_cut_transfer_resumes_with_a_range_request_and_is_verified(served, tmp_path: Path) -> None:
    ng, _, data, ref, public = served
    proxy = CuttingProxy(upstream=ng.port, cut_after=700_000).start()  # headers + ~0.7 MB, then cut
    try:
        r = ref(base=f"http://127.0.0.1:{proxy.port}/artifacts")
        dest = tmp_path / "agent"
        with httpx.Client() as client, pytest.raises(DownloadInterrupted):
            fetch_url(client, r, dest, public)
        part = dest / f"{r.sha256}.onnx.part"
        kept = part.stat().st_size
        assert 0 < kept < len(data)
        with httpx.Client() as client:
            result = fetch_url(client, r, dest, public)
        assert result.resumed_from == kept and result.bytes_received == len(data) - kept
        assert result.path.read_bytes() == data and not part.exists()
        assert any(line.startswith("206 ") and f'"bytes={kept}-"' in line for line in ng.access_log()), (
            ng.access_log()
        )
    finally:
        proxy.stop()


def test_url_fetcher_resumes_each_cut_then_gives_up(served, tmp_path: Path) -> None:
    ng, _, data, ref, public = served
    proxy = CuttingProxy(upstream=ng.port, cut_after=300_000, cut_connections=2).start()
    try:
        r = ref(base=f"http://127.0.0.1:{proxy.port}/artifacts")
        result = UrlFetcher(max_interruptions=3).fetch(r, tmp_path / "a", public)
        assert result.path.read_bytes() == data and result.resumed_from > 0
        always = CuttingProxy(upstream=ng.port, cut_after=300_000, cut_connections=100).start()
        try:
            r2 = ref(base=f"http://127.0.0.1:{always.port}/artifacts")
            with pytest.raises(UrlGivenUp, match="cut 2 times"):
                UrlFetcher(max_interruptions=2).fetch(r2, tmp_path / "b", public)
            assert (tmp_path / "b" / f"{r2.sha256}.onnx.part").stat().st_size > 0, "kept for gRPC to resume"
        finally:
            always.stop()
    finally:
        proxy.stop()


def test_tampered_byte_on_the_server_is_refused_and_deleted(served, tmp_path: Path) -> None:
    ng, root, data, ref, public = served
    r = ref()
    stored = root / "artifacts" / f"{r.sha256}.onnx"
    bad = bytearray(data)
    bad[len(bad) // 3] ^= 0x01
    stored.write_bytes(bytes(bad))
    with httpx.Client() as client, pytest.raises(ArtifactRejected, match="sha256 mismatch"):
        fetch_url(client, r, tmp_path / "agent", public)
    assert not list((tmp_path / "agent").iterdir()), "nothing of the bad bytes is kept"
    with pytest.raises(UrlGivenUp, match="sha256 mismatch"):
        UrlFetcher().fetch(r, tmp_path / "agent", public)
    forged = fleet_pb2.ArtifactRef()
    forged.CopyFrom(r)
    forged.signature = Ed25519PrivateKey.generate().sign(bytes.fromhex(r.sha256))
    before = len(ng.access_log())
    with pytest.raises(ArtifactRejected, match="bad signature"):
        UrlFetcher().fetch(forged, tmp_path / "agent", public)
    assert len(ng.access_log()) == before, "a badly signed reference is refused before any request"


DEPLOY = CommandKind.deploy  # a gate-first rollout also sends a switch (no artifact)


def _deploy(ctl, device_id: str, version: str) -> object:
    r = ctl.create_rollout(
        {
            "model_version": version,
            "selector": {"device_ids": [device_id]},
            "strategy": {"canary_share": 0, "waves": 1, "max_accuracy_drop": None, "min_fps_ratio": None},
        }
    )
    return ctl.wait_for_rollout(r.id, timeout_s=60)


def _controller_behind_nginx(  # noqa: ANN202
    tmp_path: Path, sqlite_url: str, nginx_root: Path | None = None, shared: Path | None = None, **nginx: str
):
    """A controller whose artifact dir nginx serves (or a mirror of it at ``nginx_root``); with
    ``shared``, the deployment layout: the artifact dir ``shared/artifacts`` outside the private
    data dir, nginx's root ``shared``."""
    data_dir = tmp_path / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    ng = start_nginx(tmp_path / "nginx", nginx_root or shared or data_dir, SECRET, **nginx)
    ctl = make_controller(data_dir, sqlite_url, artifact_url_base=ng.base_url, artifact_url_secret=SECRET,
                          artifact_url_ttl_s=60, artifact_dir=shared / "artifacts" if shared else None)  # fmt: skip
    return ctl, ng


def _group_exists(name: str) -> bool:
    import grp

    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A folder other users can traverse (pytest's tmp_path is 0700), for nginx workers that run
    as another user than the controller, as they do in a deployment."""
    path = Path(tempfile.mkdtemp(prefix="edgeloop-nginx-test-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_fleet_agent_deploys_with_the_bytes_from_nginx(
    tmp_path: Path, sqlite_url: str, shared_dir: Path
) -> None:
    """nginx's workers run as ``nobody`` (when the tests run as root): the controller's stored
    artifacts must be readable by the web server's user, not only by the controller's."""
    group = "nogroup" if _group_exists("nogroup") else "nobody"  # Debian's name, others'
    user = f"nobody {group}" if os.geteuid() == 0 else "root"
    ctl, ng = _controller_behind_nginx(tmp_path, sqlite_url, shared=shared_dir, worker_user=user)
    agent = None
    try:
        mv = ctl.import_model(
            write_onnx(tmp_path / "m.onnx", "v1", pad_bytes=1 << 20), manifest_json("tiny:1")
        )
        agent = start_agent(ctl.grpc_target, tmp_path / "agent", TOKEN)
        served0 = ctl.ctx.metrics.bytes_served._value.get()
        done = _deploy(ctl, agent.device_id, "tiny:1")
        assert done.state == RolloutState.succeeded, (done.reason, [d.message for d in done.deployments])
        assert agent.executor.active == "tiny:1"
        assert ctl.ctx.metrics.bytes_served._value.get() == served0, "no artifact byte through gRPC"
        hits = [line for line in ng.access_log() if mv.sha256 in line]
        assert hits and hits[-1].startswith("200 ") and f"device={agent.device_id}" in hits[-1]
        assert hits[-1].endswith(f" {mv.size_bytes}")
        with ctl.session() as s:
            (command,) = s.exec(
                select(Command).where(Command.device_id == agent.device_id, Command.kind == DEPLOY)
            ).all()
            assert command.state.value == "succeeded" and "over gRPC" not in command.message
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        ng.stop()


def test_bad_bytes_on_nginx_fall_back_to_grpc_with_the_reason_recorded(
    tmp_path: Path, sqlite_url: str
) -> None:
    mirror = tmp_path / "mirror"
    (mirror / "artifacts").mkdir(parents=True)
    ctl, ng = _controller_behind_nginx(tmp_path, sqlite_url, nginx_root=mirror)
    agent = None
    try:
        mv = ctl.import_model(
            write_onnx(tmp_path / "m.onnx", "v1", pad_bytes=256 << 10), manifest_json("tiny:1")
        )
        with ctl.session() as s:
            stored = Path(crud.get_artifact(session=s, artifact_id=mv.artifact_id).path)
        copy = mirror / "artifacts" / stored.name
        shutil.copyfile(stored, copy)
        bad = bytearray(copy.read_bytes())
        bad[-100] ^= 0xFF  # a mirror (CDN, object store) holding altered bytes
        copy.write_bytes(bytes(bad))
        agent = start_agent(ctl.grpc_target, tmp_path / "agent", TOKEN)
        done = _deploy(ctl, agent.device_id, "tiny:1")
        assert done.state == RolloutState.succeeded, (done.reason, [d.message for d in done.deployments])
        with ctl.session() as s:
            (command,) = s.exec(
                select(Command).where(Command.device_id == agent.device_id, Command.kind == DEPLOY)
            ).all()
            message = command.message
        assert "over gRPC: URL failed" in message and "sha256 mismatch" in message, message
        assert ctl.ctx.metrics.bytes_served._value.get() >= mv.size_bytes
        on_disk = tmp_path / "agent" / "artifacts" / stored.name
        assert on_disk.read_bytes() == stored.read_bytes(), "the device holds the signed bytes"
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        ng.stop()


def test_a_url_cut_every_time_is_given_up_and_grpc_resumes_from_its_bytes(
    tmp_path: Path, sqlite_url: str
) -> None:
    """Every connection to nginx is cut (a proxy the test controls): the agent resumes with Range
    until it gives the URL up, then gRPC goes on from the bytes already on disk."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ng = start_nginx(tmp_path / "nginx", data_dir, SECRET)
    proxy = CuttingProxy(upstream=ng.port, cut_after=400_000, cut_connections=1000).start()
    ctl = make_controller(data_dir, sqlite_url, artifact_url_base=f"http://127.0.0.1:{proxy.port}/artifacts",
                          artifact_url_secret=SECRET)  # fmt: skip
    agent = None
    try:
        mv = ctl.import_model(
            write_onnx(tmp_path / "m.onnx", "v1", pad_bytes=3 << 20), manifest_json("tiny:1")
        )
        agent = start_agent(ctl.grpc_target, tmp_path / "agent", TOKEN)
        served0 = ctl.ctx.metrics.bytes_served._value.get()
        done = _deploy(ctl, agent.device_id, "tiny:1")
        assert done.state == RolloutState.succeeded, (done.reason, [d.message for d in done.deployments])
        with ctl.session() as s:
            (command,) = s.exec(
                select(Command).where(Command.device_id == agent.device_id, Command.kind == DEPLOY)
            ).all()
        assert "over gRPC: URL failed (cut 3 times" in command.message, command.message
        ranges = [line for line in ng.access_log() if line.startswith("206 ")]
        assert len(ranges) == 2, ng.access_log()  # the 2nd and 3rd attempts resumed
        from_grpc = ctl.ctx.metrics.bytes_served._value.get() - served0
        assert 0 < from_grpc < mv.size_bytes - 2 * 300_000, "gRPC sent only what the URL had not"
        assert (tmp_path / "agent" / "artifacts" / f"{mv.sha256}.onnx").stat().st_size == mv.size_bytes
    finally:
        if agent is not None:
            agent.stop()
        ctl.stop()
        proxy.stop()
        ng.stop()


def test_each_device_gets_its_own_url_and_none_is_stored(tmp_path: Path, sqlite_url: str) -> None:
    """URLs are made as a command goes onto a device's stream: each names that device (nginx
    refuses it for another), and the stored command has none (a resend gets a fresh one)."""
    ctl, ng = _controller_behind_nginx(tmp_path, sqlite_url)
    agents = []
    try:
        mv = ctl.import_model(write_onnx(tmp_path / "m.onnx", "v1"), manifest_json("tiny:1"))
        agents = [start_agent(ctl.grpc_target, tmp_path / f"agent{i}", TOKEN, name=f"d{i}") for i in range(2)]
        r = ctl.create_rollout(
            {
                "model_version": "tiny:1",
                "selector": {"device_ids": [a.device_id for a in agents]},
                "strategy": {"canary_share": 0, "waves": 1, "max_accuracy_drop": None, "min_fps_ratio": None},
            }
        )
        assert ctl.wait_for_rollout(r.id, timeout_s=60).state == RolloutState.succeeded
        hits = [line for line in ng.access_log() if mv.sha256 in line]
        for a in agents:
            assert any(f"device={a.device_id}" in line and line.startswith("200 ") for line in hits), hits
        with ctl.session() as s:
            payloads = [c.payload for c in s.exec(select(Command).where(Command.kind == DEPLOY)).all()]
        assert payloads and all(mv.sha256 in p and "url" not in p.lower() for p in payloads), payloads
    finally:
        for a in agents:
            a.stop()
        ctl.stop()
        ng.stop()


def test_real_agent_runtime_deploys_from_nginx(tmp_path: Path, sqlite_url: str) -> None:
    """The real agent (AgentRuntime: ONNX Runtime engine, evaluation) with its model from nginx."""
    from test_real_agent import _real_agent, _tar, _testkit

    kit = _testkit()
    model = kit.make_artifact(tmp_path / "models", "good", version="colour:1")
    shard = _tar(kit.colour_folder(tmp_path / "eval", per_class=3), tmp_path / "eval.tar")
    ctl, ng = _controller_behind_nginx(tmp_path, sqlite_url)
    agent = None
    try:
        mv = ctl.import_artifact_dir(model.parent)
        eval_id = ctl.import_shard(shard, name="colour-eval").id
        agent = _real_agent(ctl.grpc_target, tmp_path / "agent", "real-0")
        served0 = ctl.ctx.metrics.bytes_served._value.get()
        r = ctl.create_rollout(
            {
                "model_version": "colour:1",
                "selector": {"tags": ["real"]},
                "evaluation_artifact_id": eval_id,
                "backend": "onnxruntime",
                "strategy": {"canary_share": 0, "waves": 1, "max_accuracy_drop": None, "min_fps_ratio": None},
            }
        )
        done = ctl.wait_for_rollout(r.id, timeout_s=120)
        assert done.state == RolloutState.succeeded, (done.reason, [d.message for d in done.deployments])
        assert done.deployments[0].accuracy == pytest.approx(100.0)
        assert agent.executor.state().active == "colour:1"
        assert ctl.ctx.metrics.bytes_served._value.get() == served0, "model and shard both from nginx"
        log = ng.access_log()
        assert any(mv.sha256 in line and line.startswith("200 ") for line in log)
        assert any(".tar?" in line and line.startswith("200 ") for line in log), "the evaluation shard too"
    finally:
        if agent is not None:
            agent.stop()
            agent.executor.close()
        ctl.stop()
        ng.stop()


def test_expired_url_falls_back_to_grpc(served, tmp_path: Path) -> None:
    """What the daemon sees when a command waited past its URL's expiry: 410, then gRPC."""
    _, _, _, ref, public = served
    with pytest.raises(UrlGivenUp, match="HTTP 410"):
        UrlFetcher().fetch(ref(ttl=-1), tmp_path / "agent", public)
