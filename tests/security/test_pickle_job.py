"""Finding 4 through the REST API: a job whose spec names a hostile pickle as the pretrained
checkpoint fails with the file named, and the payload never runs (neither in the controller
nor anywhere else)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest
import torch
from ctl_helpers import make_controller

from trainer.datasets.synth_pcb import synthesize

API = {"Authorization": "Bearer test-api-token"}


class _Payload:
    """Unpickling this runs ``touch <marker>`` (what a hostile checkpoint would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - the pickle protocol
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize(
    ("overrides", "in_spec", "named"),
    [
        ([], False, "evil.pth"),  # the safe load refuses it, naming the file
        (["model.allow_unsafe_pickle=true"], False, "allow_unsafe_pickle"),  # the opt-in is not the API's
        ([], True, "allow_unsafe_pickle"),
    ],
    ids=["safe-load", "opt-in-override", "opt-in-in-spec"],
)
def test_hostile_pretrained_checkpoint_through_a_rest_job_does_not_run(
    tmp_path: Path, overrides: list[str], in_spec: bool, named: str
) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"state_dict": {}, "x": _Payload(marker)}, evil)
    data = tmp_path / "pcb"
    synthesize(data, 24, 32, seed=1)
    spec = {
        "results_dir": str(tmp_path / "runs"),
        "model": {"backbone": "resnet18", "pretrained_path": str(evil)}
        | ({"allow_unsafe_pickle": True} if in_spec else {}),
        "dataset": {"root": str(data), "image_size": 32},
        "train": {"epochs": 1, "batch_size": 8, "num_workers": 0, "device": "cpu"},
    }
    ctl = make_controller(tmp_path / "data", None, http=True)
    try:
        api = httpx.Client(base_url=f"http://127.0.0.1:{ctl.http_port}/api/v1", headers=API, timeout=30)
        job = api.post(
            "/jobs/", json={"task": "classification", "action": "train", "spec": spec, "overrides": overrides}
        )
        assert job.status_code == 201, job.text
        deadline = time.monotonic() + 300
        state = job.json()
        while time.monotonic() < deadline and state["state"] not in ("succeeded", "failed"):
            time.sleep(0.5)
            state = api.get(f"/jobs/{job.json()['id']}").json()
        assert state["state"] == "failed", state
        assert named in (state.get("error") or ""), state
        assert not marker.exists(), "the pickle's payload ran"
    finally:
        ctl.stop()
