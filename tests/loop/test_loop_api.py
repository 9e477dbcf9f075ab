"""Loops through the REST API: refused with the reason before anything starts, and a tiny real
loop (real training, one real agent process, real benchmarks) that ends in a report page."""

from __future__ import annotations

import tarfile
import time
from pathlib import Path

import httpx
import pytest

from controller.core.config import get_settings
from controller.demo.local_agents import EmulatedClass, LocalFleet
from controller.runtime import Controller

SPEC = Path(__file__).resolve().parents[2] / "trainer" / "specs" / "classification.yaml"
TOKEN = "loop-api-token"
ENROL = "-loop-enrol"  # a leading dash once broke the agents' command line (argparse took it for an option)


@pytest.fixture()
def ctl(tmp_path: Path):
    settings = get_settings(
        data_dir=tmp_path / "ctl", grpc_host="127.0.0.1", grpc_port=0, http_host="127.0.0.1", http_port=0,
        start_broker=False, api_token=TOKEN, enrollment_token=ENROL, rollout_tick_s=0.1,
        heartbeat_interval_s=1,
    )  # fmt: skip
    controller = Controller(settings).start(http=True, telemetry=False)
    yield controller
    controller.stop()


def _client(ctl: Controller) -> httpx.Client:
    return httpx.Client(
        base_url=f"http://127.0.0.1:{ctl.http_port}/api/v1",
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )


def _shard(tmp_path: Path) -> tuple[Path, Path]:
    from trainer.jobs import synthesize_dataset

    data = tmp_path / "data"
    synthesize_dataset("classification", data, 72, 24, seed=1, difficulty="easy")
    tar_path = tmp_path / "eval.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(data / "test", arcname="eval")
    return data, tar_path


def _body(data: Path, eval_id: str, goals: dict) -> dict:
    return {
        "spec": str(SPEC),
        "name": "tiny",
        "overrides": [
            f"dataset.root={data}", "dataset.image_size=24", "train.batch_size=8", "train.num_workers=0",
            "train.optimizer=adamw", "train.lr=0.002",
        ],
        "baseline_backbone": "resnet18",
        "train_epochs": 1,
        "retrain_epochs": 1,
        "goals": goals,
        "ladders": {"prune_ratios": [0.5], "students": [], "per_round": 1},
        "max_rounds": 1,
        "evaluation_artifact_id": eval_id,
        "calibration_artifact_id": eval_id,
        "bench_duration_ms": 200,
    }  # fmt: skip


def test_bad_loops_are_refused_naming_the_key_and_nothing_starts(ctl: Controller, tmp_path: Path) -> None:
    data, shard = _shard(tmp_path)
    eval_id = ctl.import_shard(shard, name="eval").id
    with _client(ctl) as client:
        r = client.post("/loops/", json=_body(data, eval_id, {"classes": {"cpu-1t": {"min_fsp": 30}}}))
        assert (
            r.status_code == 422
            and "goals.classes.cpu-1t.min_fsp: unknown key; allowed:" in r.json()["detail"]
        )
        r = client.post("/loops/", json=_body(data, "nope", {"classes": {"cpu-1t": {"min_fps": 30}}}))
        assert (
            r.status_code == 404 and "evaluation_artifact_id: artifact nope not found" in r.json()["detail"]
        )
        r = client.post("/loops/", json=_body(data, eval_id, {"classes": {"jetson": {"min_fps": 30}}}))
        assert r.status_code == 422 and "no online device of class(es) ['jetson']" in r.json()["detail"]
        r = client.post("/loops/", json={**_body(data, eval_id, {"classes": {}}), "spec": "/nowhere.yaml"})
        assert r.status_code == 422
        r = client.post(
            "/loops/", json={**_body(data, eval_id, {"classes": {"a": {"min_fps": 1}}}), "epochs": 3}
        )
        assert r.status_code == 422 and "epochs" in r.text  # unknown top-level key
        streams = {"classes": {"cpu-1t": {"min_streams": 4, "stream_fps": 15}}}
        r = client.post("/loops/", json=_body(data, eval_id, streams))
        assert r.status_code == 422 and "goals.classes.cpu-1t.min_streams: measuring stream capacity needs a " \
            "reference clip" in r.json()["detail"]  # fmt: skip
        r = client.post("/loops/", json={**_body(data, eval_id, streams), "stream_clip_artifact_id": "nope"})
        assert (
            r.status_code == 404 and "stream_clip_artifact_id: artifact nope not found" in r.json()["detail"]
        )
        assert client.get("/loops/").json() == []
        assert client.get("/loops/unknown").status_code == 404


def test_a_loop_runs_through_the_api_and_serves_its_report(ctl: Controller, tmp_path: Path) -> None:
    data, shard = _shard(tmp_path)
    eval_id = ctl.import_shard(shard, name="eval").id
    fleet = LocalFleet(
        ctl.grpc_target, ENROL, tmp_path / "agents", [EmulatedClass("cpu-1t", threads=1)],
        ca_fingerprint=ctl.ca_fingerprint, enroll_target=ctl.enroll_target,  # enrol over TLS, CA pinned
    ).start()  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not ctl.list_devices(online=True) and time.monotonic() < deadline:
            fleet.check_alive()
            time.sleep(0.3)
        goals = {"classes": {"cpu-1t": {"min_speedup": 1.2, "max_accuracy_drop": 100}}}
        with _client(ctl) as client:
            # min_rounds=1: INT8 of the baseline may already meet the goal; the loop must still try a candidate
            r = client.post("/loops/", json={**_body(data, eval_id, goals), "min_rounds": 1})
            assert r.status_code == 201, r.text
            loop_id = r.json()["id"]
            deadline = time.monotonic() + 600
            while (status := client.get(f"/loops/{loop_id}").json())["state"] == "running":
                assert time.monotonic() < deadline, status["progress"][-5:]
                time.sleep(1)
            assert status["state"] == "succeeded", status["error"]
            assert any("round 1" in line for line in status["progress"])
            (choice,) = status["classes"]
            assert choice["device_class"] == "cpu-1t" and choice["chosen_version"].startswith("tiny:")
            page = httpx.get(  # the report URL is absolute (it starts with /api/v1)
                f"http://127.0.0.1:{ctl.http_port}{status['report']}",
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            assert page.status_code == 200
            assert "id='accuracy-vs-fps'" in page.text and "data:image/png;base64," in page.text
            assert [x["id"] for x in client.get("/loops/").json()] == [loop_id]
    finally:
        fleet.stop()
