"""Every classification action end to end on real files: train -> evaluate -> inference -> prune
-> retrain -> distill -> export -> quantize -> evaluate the INT8 ONNX."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from trainer.jobs import run_action
from trainer.models.checkpoint import load_checkpoint
from trainer.spec import SpecError


def _status(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "status.json").read_text().splitlines()]


def test_train_writes_results_dir(trained):
    spec, res = trained
    out = res.output_dir
    assert out == Path(spec["results_dir"]) / "train"
    for name in (
        "spec.yaml",
        "log.txt",
        "metrics.json",
        "status.json",
        "model.pth",
        "last.pth",
        "history.json",
    ):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0.0 <= metrics["val_accuracy"] <= 1.0
    assert metrics["images_per_s"] > 0
    statuses = [s["status"] for s in _status(out)]
    assert statuses[0] == "started" and statuses[-1] == "succeeded" and "progress" in statuses
    ck = load_checkpoint(res.model_path)
    assert ck.backbone == "resnet18" and len(ck.labels) == 6 and not ck.structured
    assert "dataset:" in (out / "spec.yaml").read_text()


def test_evaluate_and_inference(trained):
    spec, _ = trained
    res = run_action("classification", "evaluate", spec)
    m = res.metrics
    cm = np.array(m["confusion_matrix"])
    assert cm.shape == (6, 6) and cm.sum() == m["num_images"] == 12
    assert m["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert set(m["per_class"]) == set(m["labels"])
    png = res.output_dir / "confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    res = run_action("classification", "inference", spec, ["inference.topk=2"])
    rows = json.loads((res.output_dir / "predictions.json").read_text())
    assert len(rows) == 12 and all(len(r["topk"]) == 2 for r in rows)
    assert all(r["label"] in m["labels"] and 0 < r["score"] <= 1 for r in rows)
    with open(res.output_dir / "predictions.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 12


@pytest.fixture(scope="module")
def pruned(trained):
    spec, _ = trained
    return run_action("classification", "prune", spec, ["prune.ratio=0.5"])


def test_prune_keeps_head_and_rounds_channels(pruned, trained):
    m = pruned.metrics
    assert m["params_after"] < 0.5 * m["params_before"]
    assert m["macs_after"] < m["macs_before"]
    ck = load_checkpoint(pruned.model_path)
    assert ck.structured
    convs = [mod for mod in ck.model.modules() if isinstance(mod, torch.nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert ck.model.fc.out_features == 6
    assert ck.lineage["prune_ratio"] == 0.5
    assert ck.model(torch.randn(2, 3, 32, 32)).shape == (2, 6)


def test_prune_threshold_mode(trained):
    spec, trained_res = trained
    overrides = [
        "prune.mode=threshold",
        "prune.threshold=0.97",  # barely trained: importances sit close together
        f"prune.checkpoint={trained_res.model_path}",
        "results_dir=" + spec["results_dir"] + "/th",
    ]
    res = run_action("classification", "prune", spec, overrides)
    ck = load_checkpoint(res.model_path)
    assert res.metrics["params_after"] < res.metrics["params_before"]
    assert all(c.out_channels % 8 == 0 for c in ck.model.modules() if isinstance(c, torch.nn.Conv2d))


def test_retrain_pruned(pruned, trained):
    spec, _ = trained
    res = run_action("classification", "retrain", spec)
    ck = load_checkpoint(res.model_path)
    assert ck.structured and ck.lineage["history"][-2:] == ["prune:ratio=0.5", "retrain"]
    assert res.metrics["params"] == pytest.approx(pruned.metrics["params_after"])


def test_distill_into_pruned_student_with_projection(pruned, trained):
    spec, res = trained
    d = {
        "teacher": {"backbone": "resnet18", "checkpoint": str(res.model_path)},
        "student_checkpoint": str(pruned.model_path),
        "bindings": [
            {
                "teacher_module_name": "layer3",
                "student_module_name": "layer3",
                "criterion": "L1",
                "weight": 0.5,
            }
        ],
    }
    out = run_action("classification", "distill", {**spec, "distill": d})
    assert out.metrics["projections"] == 1  # pruned layer3 has fewer channels than the teacher's
    ck = load_checkpoint(out.model_path)
    assert ck.structured and ck.lineage["teacher"].startswith("resnet18:")
    assert not any("projection" in k for k in ck.model.state_dict())  # projections are not kept


def test_export_and_quantize(trained):
    spec, _ = trained
    res = run_action("classification", "export", spec)
    from protos.manifest import load_manifest, sha256_file

    onnx_path, man = res.onnx_path, load_manifest(res.manifest_path)
    model = onnx.load(str(onnx_path))
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
    assert man.sha256 == sha256_file(onnx_path) and man.task == "classification"
    assert list(man.inputs[0].shape) == [-1, 3, 32, 32] and man.precision == "fp32"
    assert len(man.labels) == 6 and man.preprocessing.height == 32 and len(man.preprocessing.mean) == 3
    assert man.lineage.history[-1] == "export" and "accuracy" in man.metrics
    assert res.metrics["parity_max_abs_diff"] < 1e-3
    assert (res.output_dir / "labels.txt").read_text().split() == list(man.labels)

    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (3, 6)

    q = run_action("classification", "quantize", spec, ["quantize.calibrate_method=entropy"])
    qm = load_manifest(q.manifest_path)
    ops = {n.op_type for n in onnx.load(str(q.onnx_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert qm.precision == "int8-qdq" and qm.lineage.quantization == "int8-qdq-ptq"
    assert qm.lineage.details["calibrate_method"] == "entropy"
    assert qm.lineage.details["calibration_samples"] == "8"
    assert qm.sha256 == sha256_file(q.onnx_path)
    assert 0 <= q.metrics["test_accuracy_int8"] <= 1

    ev = run_action("classification", "evaluate", spec, [f"evaluate.checkpoint={q.onnx_path}"])
    assert ev.metrics["runtime"] == "onnxruntime-int8-qdq"
    assert ev.metrics["accuracy"] == pytest.approx(q.metrics["test_accuracy_int8"])


def test_quantize_straight_from_pth(trained, tmp_path):
    spec, res = trained
    spec = {**spec, "results_dir": str(tmp_path)}
    q = run_action(
        "classification",
        "quantize",
        spec,
        [f"quantize.checkpoint={res.model_path}", "quantize.evaluate=false"],
    )
    assert (q.output_dir / "model_fp32.onnx").is_file() and q.onnx_path.is_file()


def test_qat_mode_is_refused_by_the_spec(trained):
    """quantize.mode=qat is refused before any work (nothing written), with the reason."""
    spec, _ = trained
    out = Path(spec["results_dir"]) / "quantize"
    before = sorted(out.rglob("*")) if out.exists() else []
    with pytest.raises(SpecError, match=r"quantize\.mode.*ModelOpt.*mode=ptq"):
        run_action("classification", "quantize", spec, ["quantize.mode=qat"])
    assert (sorted(out.rglob("*")) if out.exists() else []) == before


def test_other_backbone_trains(tiny_data, tmp_path, make_spec):
    spec = make_spec(tiny_data, tmp_path, model={"backbone": "mobilenet_v3_small"}, train={"batch_size": 24})
    res = run_action("classification", "train", spec, ["train.max_steps_per_epoch=2"])
    assert load_checkpoint(res.model_path).backbone == "mobilenet_v3_small"
