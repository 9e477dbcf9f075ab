"""``edgeloop data synth --task detection --video``: the same seed gives the same bytes, and the
ground truth describes the frames that were written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[2]


def _synth(out: Path, seed: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "edgeloop.cli", "data", "synth", "--task", "detection", "--video", str(out),
           "--seconds", "1", "--fps", "10", "--size", "160x96", "--seed", str(seed)]  # fmt: skip
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_same_seed_same_bytes_and_ground_truth_matches(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.mp4", tmp_path / "b.mp4", tmp_path / "c.mp4"
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        run = _synth(path, seed)
        assert run.returncode == 0, run.stderr
    assert a.read_bytes() == b.read_bytes()
    gt, gt_b = (json.loads(p.with_suffix(".gt.json").read_text()) for p in (a, b))
    assert gt.pop("clip") == "a.mp4" and gt_b.pop("clip") == "b.mp4" and gt == gt_b
    assert a.read_bytes() != c.read_bytes()
    with av.open(str(a)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == len(gt["frames"]) == 10
    assert (frames[0].width, frames[0].height) == (gt["width"], gt["height"]) == (160, 96)
    labels = {o["label"] for f in gt["frames"] for o in f["objects"]}
    assert "board" in labels and labels <= set(gt["labels"])
    for f in gt["frames"]:
        for o in f["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 96


def test_bad_size_is_refused(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "edgeloop.cli", "data", "synth", "--task", "detection",
           "--video", str(tmp_path / "x.mp4"), "--size", "big"]  # fmt: skip
    run = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and "--size" in run.stderr
