"""The benchmark scripts stay runnable (tiny sizes; the numbers themselves are not checked)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_throughput_compares_both_loops(tmp_path, capsys):
    out = tmp_path / "tp.json"
    rc = _load("train_throughput").main(
        [
            "--model",
            "mobilenet_v3_small",
            "--image-size",
            "32",
            "--batch",
            "4",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--device",
            "cpu",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["plain_images_per_s"] > 0 and res["ours_images_per_s"] > 0
    assert abs(res["ratio"] - res["ours_images_per_s"] / res["plain_images_per_s"]) < 0.01
    assert "goal >= 0.95" in capsys.readouterr().out


def test_model_list_shows_classification(capsys):
    from edgeloop.cli import main

    assert main(["model", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("classification:"))
    for action in ("train", "evaluate", "inference", "prune", "retrain", "distill", "quantize", "export"):
        assert action in line


def test_checkpoint_parts_round_trip_plain_and_pruned(trained, make_spec, tiny_data, tmp_path):
    """What the GPU machine sends back (``benchmarks/_checkpoint_parts.py``: fp16 parts under the
    transfer limit) loads here as the same model: a plain checkpoint and a pruned one whose whole
    module is pickled."""
    import torch

    from trainer.jobs import run_action
    from trainer.models.checkpoint import load_checkpoint

    parts = _load("_checkpoint_parts")
    _, res = trained
    pruned_spec = make_spec(
        tiny_data, tmp_path / "runs", prune={"checkpoint": str(res.model_path), "ratio": 0.5}
    )
    pruned = run_action("classification", "prune", pruned_spec)
    x = torch.rand(2, 3, 32, 32)
    for stem, path in (("plain", res.model_path), ("pruned", pruned.model_path)):
        files = parts.split_checkpoint(Path(path), tmp_path / "parts", stem)
        assert files and all(f.stat().st_size <= parts.PART_BYTES for f in files)
        joined = load_checkpoint(parts.join_checkpoint(tmp_path / "parts", stem, tmp_path / f"{stem}.pth"))
        original = load_checkpoint(path)
        assert joined.structured == original.structured == (stem == "pruned")
        assert joined.labels == original.labels
        with torch.no_grad():
            assert torch.allclose(joined.model(x), original.model(x), atol=5e-2, rtol=1e-2)


def test_detection_train_throughput_cpu_mode(tmp_path):
    out = tmp_path / "det.json"
    rc = _load("detection_train_throughput").main(
        "--device cpu --tiny --image-size 32 --batch 2 --steps 1 --warmup 1 --rounds 1 --json".split()
        + [str(out)]
    )
    assert rc == 0
    run = json.loads(out.read_text())["runs"][0]
    assert run["plain_images_per_s"] > 0 and run["ours_images_per_s"] > 0
    assert run["ours_vs_plain"] > 0
