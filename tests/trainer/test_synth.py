"""The synthetic PCB data set: layout, determinism, variation, the CLI."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

from edgeloop.cli import main
from trainer.datasets.synth_pcb import CLASSES


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*.png"))
    }


def test_layout_and_determinism(tmp_path, capsys):
    args = ["data", "synth", "--task", "classification", "--num-images", "36", "--image-size", "24"]
    assert main([*args, "--out", str(tmp_path / "a"), "--seed", "7"]) == 0
    assert main([*args, "--out", str(tmp_path / "b"), "--seed", "7"]) == 0
    assert main([*args, "--out", str(tmp_path / "c"), "--seed", "8"]) == 0
    a, b, c = (_digest(tmp_path / x) for x in "abc")
    assert a == b  # same seed, same bytes
    assert a.keys() == c.keys() and a != c
    for split in ("train", "val", "test"):
        assert sorted(p.name for p in (tmp_path / "a" / split).iterdir()) == sorted(CLASSES)
    img = Image.open(next((tmp_path / "a" / "train" / "ok").glob("*.png")))
    assert img.size == (24, 24) and img.mode == "RGB"
    assert len(a) == 36


def test_images_vary_and_classes_differ(tmp_path):
    from trainer.datasets.synth_pcb import render

    oks = [np.asarray(render("ok", np.random.default_rng([1, 0, 0, i]), 48), dtype=float) for i in range(4)]
    assert min(np.abs(oks[0] - o).mean() for o in oks[1:]) > 5  # boards, lighting, layout differ
    # the same RNG stream with a defect differs from the ok board
    ok = np.asarray(render("ok", np.random.default_rng(5), 48), dtype=float)
    missing = np.asarray(render("missing_component", np.random.default_rng(5), 48), dtype=float)
    assert np.abs(ok - missing).mean() > 0.5


def test_refuses_too_few_images(tmp_path, capsys):
    rc = main(["data", "synth", "--task", "classification", "--out", str(tmp_path), "--num-images", "5"])
    assert rc == 2
    assert "at least" in capsys.readouterr().err


def test_easy_difficulty_is_deterministic_differs_and_is_checked(tmp_path):
    import pytest

    from trainer.datasets.synth_pcb import synthesize

    a = synthesize(tmp_path / "a", 18, 24, seed=3, difficulty="easy")
    synthesize(tmp_path / "b", 18, 24, seed=3, difficulty="easy")
    synthesize(tmp_path / "s", 18, 24, seed=3)
    assert a["difficulty"] == "easy"
    easy, again, standard = (_digest(tmp_path / x) for x in "abs")
    assert easy == again and easy.keys() == standard.keys() and easy != standard
    with pytest.raises(ValueError, match="allowed standard, easy"):
        synthesize(tmp_path / "x", 18, 24, difficulty="hard")
