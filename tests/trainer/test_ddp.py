"""train.num_gpus > 1: DistributedDataParallel through torchrun, here 2 CPU processes on gloo."""

from __future__ import annotations

import json

import torch

from trainer.jobs import run_action
from trainer.models.checkpoint import load_checkpoint


def test_two_process_gloo_training(tiny_data, tmp_path, make_spec):
    spec = make_spec(
        tiny_data, tmp_path, train={"num_gpus": 2, "epochs": 1, "batch_size": 8, "max_steps_per_epoch": 3}
    )
    res = run_action("classification", "train", spec)
    assert res.metrics["world_size"] == 2
    status = [json.loads(x) for x in (res.output_dir / "status.json").read_text().splitlines()]
    assert status[0]["status"] == "started" and status[0]["world_size"] == 2
    assert status[-1]["status"] == "succeeded"
    assert sum(s["status"] == "started" for s in status) == 1  # only rank 0 writes
    ck = load_checkpoint(res.model_path)  # saved from the unwrapped module: loads without DDP prefixes
    assert ck.model(torch.randn(1, 3, 32, 32)).shape == (1, 6)
    assert not any(k.startswith("module.") for k in ck.model.state_dict())


def test_distributed_failure_is_reported(tiny_data, tmp_path, make_spec):
    spec = make_spec(
        tiny_data, tmp_path, train={"num_gpus": 2, "epochs": 1, "resume": str(tmp_path / "nope.pth")}
    )
    (tmp_path / "nope.pth").write_bytes(b"garbage")
    try:
        run_action("classification", "train", spec)
    except RuntimeError as exc:
        assert "distributed classification train failed" in str(exc)
    else:  # pragma: no cover
        raise AssertionError("a broken resume checkpoint must fail the distributed run")
