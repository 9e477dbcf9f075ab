"""REST API: token auth, model import (ours and foreign), 4xx with the reason and nothing
half-written, rollouts and the results matrix, jobs, health and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ctl_helpers import ScriptedExecutor, make_controller, manifest_json, start_agent, write_onnx
from sqlmodel import select

from controller.models import Artifact, ModelVersion, Rollout

TOKEN = "test-enrollment-token"


@pytest.fixture
def api(tmp_path: Path, db_url: str) -> Iterator[tuple]:
    ctl = make_controller(tmp_path / "data", db_url, http=True)
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{ctl.http_port}/api/v1",
        headers={"Authorization": "Bearer test-api-token"},
        timeout=30,
    )
    try:
        yield ctl, client
    finally:
        client.close()
        ctl.stop()


def _upload(client: httpx.Client, onnx_path: Path, manifest: str) -> httpx.Response:
    with open(onnx_path, "rb") as fh:
        return client.post(
            "/models/import", files={"onnx": ("model.onnx", fh), "manifest": ("manifest.json", manifest)}
        )


def _rows(ctl) -> tuple[int, int, int, int]:
    with ctl.session() as s:
        files = len(list(ctl.settings.artifacts_dir.glob("*")))
        return (
            len(s.exec(select(Artifact)).all()),
            len(s.exec(select(ModelVersion)).all()),
            len(s.exec(select(Rollout)).all()),
            files,
        )


def test_token_is_required(api) -> None:
    ctl, client = api
    r = httpx.get(f"http://127.0.0.1:{ctl.http_port}/api/v1/devices/")
    assert r.status_code == 401 and "API token" in r.json()["detail"]
    r = httpx.get(
        f"http://127.0.0.1:{ctl.http_port}/api/v1/devices/", headers={"Authorization": "Bearer wrong"}
    )
    assert r.status_code == 401
    health = httpx.get(f"http://127.0.0.1:{ctl.http_port}/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_import_ours_and_a_foreign_model_and_lineage(api, tmp_path: Path) -> None:
    ctl, client = api
    r = _upload(client, write_onnx(tmp_path / "a.onnx", "a"), manifest_json("tiny:1"))
    assert r.status_code == 201, r.text
    assert r.json()["size_bytes"] > 0 and len(r.json()["sha256"]) == 64
    r = _upload(client, write_onnx(tmp_path / "b.onnx", "b"), manifest_json("tiny:2", parent="tiny:1"))
    assert r.status_code == 201
    # a model our trainer did not make: a bare manifest, inputs/outputs/sha filled from the file
    foreign = json.dumps({"name": "vendor-net", "version": "vendor-net:7", "task": "classification"})
    r = _upload(client, write_onnx(tmp_path / "c.onnx", "c"), foreign)
    assert r.status_code == 201, r.text
    assert r.json()["lineage"]["action"] == "import"
    models = client.get("/models").json()
    assert models["count"] == 3
    lineage = client.get("/models/tiny:2/lineage").json()
    assert [a["version"] for a in lineage["ancestors"]] == ["tiny:1"]
    assert [c["version"] for c in client.get("/models/tiny:1/lineage").json()["children"]] == ["tiny:2"]
    with ctl.session() as s:
        art = s.exec(select(Artifact).where(Artifact.name == "vendor-net:7")).one()
        m = json.loads(art.manifest_json)
        assert m["inputs"][0]["name"] == "input" and m["outputs"][0]["name"] == "logits" and m["opset"] == 17


@pytest.mark.parametrize(
    ("manifest", "status", "reason"),
    [
        ('{"name": "x", "version": "x:1", "colour": 3}', 422, "invalid manifest"),
        ('{"name": "x"}', 422, "needs 'name' and 'version'"),
        ("not json", 422, "invalid manifest"),
        (manifest_json("x:1", sha256="0" * 64), 422, "sha256 mismatch"),
        (
            manifest_json("x:1", inputs=[{"name": "pixels", "dtype": "float32", "shape": [-1, 4]}]),
            422,
            "not inputs of the ONNX graph",
        ),
    ],
)
def test_bad_imports_get_the_reason_and_leave_nothing(
    api, tmp_path: Path, manifest: str, status: int, reason: str
) -> None:
    ctl, client = api
    before = _rows(ctl)
    r = _upload(client, write_onnx(tmp_path / "m.onnx", "m"), manifest)
    assert r.status_code == status and reason in r.json()["detail"], r.text
    assert _rows(ctl) == before, "no row and no stored file may remain"


def test_not_onnx_duplicate_and_missing(api, tmp_path: Path) -> None:
    ctl, client = api
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00\x01 definitely not a protobuf graph" * 10)
    r = _upload(client, junk, manifest_json("x:1"))
    assert r.status_code == 422 and "not an ONNX model" in r.json()["detail"]
    assert _rows(ctl) == (0, 0, 0, 0)
    assert _upload(client, write_onnx(tmp_path / "a.onnx", "a"), manifest_json("x:1")).status_code == 201
    before = _rows(ctl)
    r = _upload(client, write_onnx(tmp_path / "b.onnx", "b"), manifest_json("x:1"))
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert _rows(ctl) == before
    assert (
        client.post("/models/import", files={"onnx": ("m.onnx", b"x")}).status_code == 422
    )  # manifest missing
    assert client.get("/models/nope:1").status_code == 404
    assert client.get("/devices/nope").json()["detail"] == "device 'nope' not found"


def test_rollout_validation_and_no_half_written_rollout(api, tmp_path: Path) -> None:
    ctl, client = api
    agent = start_agent(
        ctl.grpc_target, tmp_path / "ag", TOKEN, hardware_class="cpu-x", executor=ScriptedExecutor()
    )
    try:
        assert _upload(client, write_onnx(tmp_path / "a.onnx", "a"), manifest_json("x:1")).status_code == 201
        cases = [
            (
                {"model_version": "nope:1", "selector": {"tags": ["a"]}},
                404,
                "model version 'nope:1' not found",
            ),
            ({"model_version": "x:1", "selector": {}}, 422, "selector needs"),
            (
                {"model_version": "x:1", "selector": {"hardware_classes": ["jetson"]}},
                422,
                "matches no enrolled",
            ),
            ({"model_version": "x:1", "selector": {"device_ids": ["ghost"]}}, 422, "unknown device 'ghost'"),
            (
                {"model_version": "x:1", "selector": {"tags": ["a"]}, "strategy": {"canary_share": 2}},
                422,
                "canary_share",
            ),
            (
                {"model_version": "x:1", "selector": {"tags": ["a"]}, "precision": "int4"},
                422,
                "precision must be",
            ),
        ]
        for body, status, reason in cases:
            r = client.post("/rollouts/", json=body)
            assert r.status_code == status, (body, r.text)
            assert reason in json.dumps(r.json()["detail"]), (reason, r.json())
        assert _rows(ctl)[2] == 0, "no rollout row after refused requests"
        ok = client.post(
            "/rollouts/",
            json={
                "model_version": "x:1",
                "selector": {"hardware_classes": ["cpu-x"]},
                "strategy": {"canary_share": 0, "waves": 1, "max_accuracy_drop": None},
            },
        )
        assert ok.status_code == 201, ok.text
        r = client.post(
            "/rollouts/", json={"model_version": "x:1", "selector": {"hardware_classes": ["cpu-x"]}}
        )
        assert r.status_code in (201, 409)  # 409 while the first is still active
        done = ctl.wait_for_rollout(ok.json()["id"], timeout_s=30)
        assert done.state.value == "succeeded"
        assert client.post(f"/rollouts/{done.id}/pause").status_code == 409
        light = client.get(f"/rollouts/{done.id}", params={"deployments": "false"}).json()
        assert light["deployments"] == [] and light["counts"] == {"succeeded": 1}
        # results and the matrix
        cmd = client.post(
            f"/devices/{agent.device_id}/benchmark",
            json={"model_version": "x:1", "precisions": ["fp32", "int8"], "round_id": "r1"},
        )
        assert cmd.status_code == 202, cmd.text
        reports = ctl.wait_for_reports([cmd.json()["id"]], timeout_s=30)
        assert {r.precision for r in reports} == {"fp32", "int8"}
        matrix = client.get("/results/matrix").json()
        assert matrix["hardware_classes"] == ["cpu-x"] and matrix["model_versions"] == ["x:1"]
        cell = next(c for c in matrix["cells"] if c["precision"] == "int8")
        assert cell["accuracy"] == pytest.approx(90.0) and cell["fps"] == pytest.approx(100.0)
        assert cell["latency_p50_ms"] == pytest.approx(40.0)
        # the other device commands: calibrate, switch, rollback
        for path, body in (("calibrate", {"model_version": "x:1", "precision": "int8"}),
                           ("switch", {"model_version": "x:1"}), ("rollback", {"reason": "test"})):  # fmt: skip
            c = client.post(f"/devices/{agent.device_id}/{path}", json=body)
            assert c.status_code == 202, c.text
            ctl.wait_for_reports([c.json()["id"]], timeout_s=30)
            got = client.get(f"/devices/{agent.device_id}/commands/{c.json()['id']}").json()
            assert got["state"] == "succeeded" and got["kind"] == path, got
        assert (
            client.post(f"/devices/{agent.device_id}/switch", json={"model_version": "nope"}).status_code
            == 404
        )
        assert client.post("/devices/ghost/rollback", json={}).status_code == 404
        devices = client.get("/devices/", params={"hardware_class": "cpu-x", "online": "true"}).json()
        assert devices["count"] == 1 and devices["data"][0]["online"] is True
        assert client.get("/devices/", params={"tag": "nope"}).json()["count"] == 0
        assert client.patch(f"/devices/{agent.device_id}", json={"tags": ["line-2"]}).json()["tags"] == [
            "line-2"
        ]
        assert client.patch(f"/devices/{agent.device_id}", json={"hardware_class": ""}).status_code == 422
    finally:
        agent.stop()


def test_jobs_and_metrics(api) -> None:
    ctl, client = api
    assert client.post("/jobs/", json={"action": ""}).status_code == 422
    job = client.post("/jobs/", json={"task": "classification", "action": "no-such-action", "spec": {"x": 1}})
    assert job.status_code == 201
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = client.get(f"/jobs/{job.json()['id']}").json()
        if state["state"] in ("succeeded", "failed"):
            break
        time.sleep(0.2)
    assert state["state"] == "failed" and state["error"], state
    assert client.get("/jobs/").json()["count"] == 1
    text = httpx.get(f"http://127.0.0.1:{ctl.http_port}/metrics").text
    assert "edgeloop_control_streams" in text and "edgeloop_artifact_bytes_served_total" in text
    spec = httpx.get(f"http://127.0.0.1:{ctl.http_port}/api/v1/openapi.json").json()
    assert "rollouts-create_rollout" in {
        op["operationId"] for p in spec["paths"].values() for op in p.values()
    }


def test_migrations_reach_head(tmp_path: Path, db_url: str) -> None:
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from controller.db import alembic_config, make_engine, migrate

    engine = make_engine(db_url)
    migrate(engine)
    migrate(engine)  # idempotent
    head = ScriptDirectory.from_config(alembic_config(db_url)).get_current_head()
    assert head and int(head) >= 3  # one linear chain (several heads would make this None)
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == head
    engine.dispose()


def test_upgrade_keeps_existing_rows(db_url: str) -> None:
    """0001 -> head on a populated table: the added job columns get their defaults."""
    import sqlalchemy as sa
    from alembic import command

    from controller.db import alembic_config, make_engine

    engine = make_engine(db_url)
    cfg = alembic_config(db_url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            sa.text(
                "INSERT INTO job (id, action, spec, state, result, error, created_at) "
                "VALUES ('j1', 'train', '{}', 'queued', '{}', '', CURRENT_TIMESTAMP)"
            )
        )
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
        row = conn.execute(sa.text("SELECT task, overrides, import_artifact FROM job WHERE id = 'j1'")).one()
    assert row[0] == "classification" and row[1] in ("[]", []) and bool(row[2]) is True
    engine.dispose()


def test_postgres_url_is_normalised() -> None:
    from controller.core.config import Settings, get_settings

    s = get_settings(db_url="postgres://u:p@db:5432/edgeloop")
    assert s.database_url == "postgresql+psycopg://u:p@db:5432/edgeloop"
    with pytest.raises(ValueError, match="EDGELOOP_API_TOKEN must be set"):
        Settings(environment="production", api_token="changethis", enrollment_token="x" * 20)
    _ = make_controller  # the fixtures above build controllers through the same helper
