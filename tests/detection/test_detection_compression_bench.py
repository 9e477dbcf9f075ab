"""``benchmarks/detection_compression.py`` end to end on tiny CPU settings: ``train`` writes the
checkpoint parts a GPU call sends back, ``measure`` joins them, exports, quantizes with real
calibration images, evaluates with ONNX Runtime and writes its table. The numbers of so tiny a
run mean nothing; what is checked is that the two steps fit together and the verdict follows
the rule the README states (INT8 >= 3x the teacher's images/s at b1 and b8, mAP at most 1.0
point below)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location(
        "detection_compression", ROOT / "benchmarks" / "detection_compression.py"
    )
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_train_then_measure_on_the_parts(tmp_path: Path) -> None:
    bench = _bench()
    common = ["--data", str(tmp_path / "data"), "--num-images", "16", "--image-size", "64"]
    common += ["--queries", "10", "--workers", "1"]
    out = tmp_path / "out"
    rc = bench.main(
        common
        + ["--runs", str(tmp_path / "train_runs"), "train", "--out", str(out), "--teacher", "resnet18"]
        + ["--teacher-queries", "10", "--batch-size", "4", "--teacher-epochs", "1", "--student-epochs", "1"]
        + ["--teacher-time", "20", "--student-time", "20", "--skip-teacher-onnx"]
    )
    assert rc == 0
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["files"] == summary["all_parts"] and all((out / f).is_file() for f in summary["files"])
    assert not list(out.glob("teacher.pth.part*"))  # the teacher is re-made here from its overrides
    assert set(summary["teacher_torch_test"]) == {"map", "map50", "map75"}

    result = tmp_path / "measure.json"
    rc = bench.main(
        common
        + ["--runs", str(tmp_path / "measure_runs"), "measure", "--ckpt-dir", str(out), "--calib", "4"]
        + ["--scopes", "conv_only", "--seconds", "0.2", "--rounds", "1", "--json", str(result)]
    )
    assert rc == 0
    res = json.loads(result.read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert list(rows) == ["teacher", "student", "student_int8_conv_only"]
    assert res["teacher_map_from_device"] is True
    assert rows["teacher"]["map"] == summary["teacher_torch_test"]["map"]
    for r in rows.values():
        assert 0.0 <= r["map"] <= 1.0 and r["images_per_s_b1"] > 0 and r["images_per_s_b8"] > 0
    # the INT8 student is a real Q/DQ model: smaller than the fp32 student it came from
    assert rows["student_int8_conv_only"]["onnx_mb"] < rows["student"]["onnx_mb"]
    q, t = rows["student_int8_conv_only"], rows["teacher"]
    rule = min(q["speedup_b1"], q["speedup_b8"]) >= 3.0 and q["map_drop_points"] <= 1.0
    assert res["goal_met"] is rule and res["int8_scope"] == "conv_only"
    assert abs(q["map_drop_points"] - round(100 * (t["map"] - q["map"]), 2)) < 1e-9
