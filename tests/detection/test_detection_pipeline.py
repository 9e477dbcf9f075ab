"""Every detection action end to end on real files, through the trainer's job entry point
(``trainer.jobs.run_action``), with a tiny RT-DETR (64 px, 10 queries, one decoder layer), then
the exported ONNX evaluated the way a device does it (agent evaluator on ONNX Runtime)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from trainer.jobs import run_action
from trainer.spec import SpecError
from trainer.tasks.detection.synth import synthesize

os.environ.setdefault("HF_HUB_OFFLINE", "1")
SPEC = Path(__file__).resolve().parents[2] / "trainer" / "specs" / "detection.yaml"
TINY = [
    "dataset.image_size=64",
    "model.num_queries=10",
    "model.d_model=32",
    "model.encoder_ffn_dim=64",
    "model.decoder_ffn_dim=64",
    "model.decoder_layers=1",
    "model.attention_heads=2",
    "model.num_denoising=10",
    "train.epochs=1",
    "train.batch_size=4",
    "train.max_steps_per_epoch=2",
    "train.num_workers=0",
    "train.device=cpu",
    "evaluate.batch_size=8",
    "quantize.num_calibration_samples=4",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pcb")
    synthesize(root, 24, 64, seed=1)
    return root


@pytest.fixture(scope="module")
def run(data: Path, tmp_path_factory):
    results = tmp_path_factory.mktemp("runs")
    base = [f"dataset.root={data}", f"results_dir={results}", *TINY]

    def go(action: str, *extra: str):
        return run_action("detection", action, SPEC, [*base, *extra])

    go.results = results  # type: ignore[attr-defined]
    go.base = base  # type: ignore[attr-defined]
    return go


@pytest.fixture(scope="module")
def trained(run):
    return run("train")


def _status(out_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (out_dir / "status.json").read_text().splitlines()]


def test_train_writes_results_dir(trained) -> None:
    out = trained.output_dir
    assert (
        (out / "model.pth").is_file() and (out / "spec.yaml").is_file() and (out / "metrics.json").is_file()
    )
    assert [s["status"] for s in _status(out)][0] == "started" and _status(out)[-1]["status"] == "succeeded"
    assert "val_map" in trained.metrics and trained.metrics["epochs"] == 1


def test_distill_evaluate_inference(run, trained) -> None:
    # student: another backbone and width (projections on the feature bindings), fewer queries
    d = run(
        "distill",
        f"distill.teacher.checkpoint={trained.model_path}",
        "distill.teacher.backbone=resnet18",
        "model.backbone=convnext_atto",
        "model.d_model=48",
        "model.num_queries=8",
    )
    assert d.metrics["teacher_backbone"] == "resnet18" and Path(d.model_path).is_file()
    ev = run("evaluate", f"evaluate.checkpoint={d.model_path}")
    assert set(ev.metrics["ap_per_class"]) == {
        "missing_hole",
        "mouse_bite",
        "open_circuit",
        "short",
        "spur",
        "spurious_copper",
    }
    assert 0.0 <= ev.metrics["map"] <= 1.0 and (ev.output_dir / "detections.json").is_file()
    inf = run("inference", "inference.conf_threshold=0.0", "inference.annotate=2")
    dets = json.loads((inf.output_dir / "detections.json").read_text())
    assert dets and {"image_id", "category_id", "bbox", "score"} <= set(dets[0])
    assert len(list((inf.output_dir / "annotated").glob("*.png"))) == 2


def test_distill_refuses_mismatched_teacher(run, trained) -> None:
    with pytest.raises(ValueError, match="teacher.backbone='resnet50'"):
        run(
            "distill", f"distill.teacher.checkpoint={trained.model_path}", "distill.teacher.backbone=resnet50"
        )
    with pytest.raises(SpecError, match="distill.teacher.checkpoint"):
        run("distill")


def test_export_quantize_and_on_device_map(run, trained, data: Path) -> None:
    from agent.backends.base import BuildOptions
    from agent.backends.onnxruntime import OnnxRuntimeEngine
    from agent.evaluate import evaluate
    from protos.manifest import load_manifest

    exp = run("export", f"export.checkpoint={trained.model_path}")
    # parity at batch 1 and 3 with order-independent matching
    assert exp.metrics["parity_max_diff_b1"] < 2e-3 and exp.metrics["parity_max_diff_b3"] < 2e-3
    graph = onnx.load(str(exp.onnx_path))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch
    m = load_manifest(exp.manifest_path)
    assert m.task == "detection" and list(m.inputs[0].shape)[0] == -1
    assert (m.detection.boxes_output, m.detection.logits_output) == ("boxes", "logits")
    assert (m.detection.box_format, m.detection.normalized, m.detection.score_activation) == (
        "cxcywh",
        True,
        "sigmoid",
    )
    assert list(m.labels)[0] == "missing_hole" and m.lineage.details["category_ids"] == "1,2,3,4,5,6"

    ev = run("evaluate", f"evaluate.checkpoint={exp.onnx_path}")
    q = run("quantize", f"quantize.checkpoint={exp.onnx_path}")
    qm = load_manifest(q.manifest_path)
    assert qm.precision == "int8-qdq" and qm.lineage.quantization == "int8-qdq-ptq"
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(q.onnx_path)).graph.node)
    assert "map_drop_points" in q.metrics
    # same inputs as classification's quantize: a .pth is exported first (model_fp32.onnx)
    qc = run(
        "quantize",
        f"quantize.checkpoint={trained.model_path}",
        "quantize.scope=conv_only",
        "quantize.evaluate=false",
    )
    assert (qc.output_dir / "model_fp32.onnx").is_file()
    qcm = load_manifest(qc.manifest_path)
    assert qcm.precision == "int8-qdq" and list(qcm.labels) == list(m.labels)
    assert qcm.detection.logits_output == "logits"
    ops = {n.op_type for n in onnx.load(str(qc.onnx_path)).graph.node if n.op_type != "QuantizeLinear"}
    assert "QLinearMatMul" not in ops

    # on-device style: the agent's own evaluator (numpy) on the ONNX through ONNX Runtime
    engine = OnnxRuntimeEngine(Path(exp.onnx_path), BuildOptions(), m)
    dev = evaluate(engine, m, data / "test", batch_size=3)
    assert dev["samples"] == len(json.loads((data / "test" / "annotations.json").read_text())["images"])
    # same model, same split: device mAP matches the trainer's ONNX evaluation (the two resize
    # implementations differ by a pixel at most, so allow a little)
    assert dev["map"] == pytest.approx(ev.metrics["map"], abs=0.02)
    engine8 = OnnxRuntimeEngine(Path(q.onnx_path), BuildOptions(), qm)
    dev8 = evaluate(engine8, qm, data / "test", batch_size=2)
    assert 0.0 <= dev8["map"] <= 1.0


def test_pretrained_backbone_from_classification_checkpoint(tmp_path: Path) -> None:
    from trainer.models.backbones import build_model
    from trainer.models.checkpoint import Checkpoint, save_checkpoint
    from trainer.tasks.detection.backbones import backbone_module, load_pretrained_backbone
    from trainer.tasks.detection.model import DetectorConfig, build_detector

    cls = build_model("resnet18", 4)
    path = save_checkpoint(
        Checkpoint(cls, "resnet18", list("abcd"), 64, [0.5] * 3, [0.5] * 3), tmp_path / "cls.pth"
    )
    det = build_detector(
        DetectorConfig(
            backbone="resnet18",
            d_model=32,
            num_queries=5,
            decoder_layers=1,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            attention_heads=2,
        )
    )
    counts = load_pretrained_backbone(det, path)
    assert counts["loaded"] > 100
    body = backbone_module(det).body
    assert torch.equal(body.layer4[1].conv2.weight, cls.layer4[1].conv2.weight)
    other = build_detector(
        DetectorConfig(
            backbone="resnet50",
            d_model=32,
            num_queries=5,
            decoder_layers=1,
            encoder_ffn_dim=32,
            decoder_ffn_dim=32,
            attention_heads=2,
        )
    )
    with pytest.raises(ValueError, match="does not fit detection backbone 'resnet50'"):
        load_pretrained_backbone(other, path)


def test_spec_refuses_bad_keys(data: Path) -> None:
    from trainer.jobs import resolve_spec

    with pytest.raises(SpecError, match="unknown key 'model.num_querys'.*num_queries"):
        resolve_spec("detection", SPEC, [f"dataset.root={data}", "model.num_querys=5"])
    with pytest.raises(SpecError, match="model.backbone"):
        resolve_spec("detection", SPEC, [f"dataset.root={data}", "model.backbone=vgg11"])
    with pytest.raises(SpecError, match="multiple of 32"):
        resolve_spec("detection", SPEC, [f"dataset.root={data}", "dataset.image_size=70"])


def test_matched_difference_is_order_independent() -> None:
    from trainer.tasks.detection.export import matched_difference

    rng = np.random.default_rng(0)
    logits, boxes = rng.normal(size=(2, 6, 3)), rng.uniform(size=(2, 6, 4))
    perm = rng.permutation(6)
    assert matched_difference(logits, boxes, logits[:, perm], boxes[:, perm]) == pytest.approx(0.0, abs=1e-12)
    assert matched_difference(logits, boxes, logits + 0.5, boxes) > 0.05


def test_benchmark_checkpoint_parts_roundtrip(trained, tmp_path: Path) -> None:
    """The benchmark ships checkpoints as zlib'd fp16 parts (transfer limit); joined, they load."""
    import importlib.util

    from trainer.tasks.detection.model import load_detector

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "detection_compression.py"
    spec = importlib.util.spec_from_file_location("detection_compression", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    parts = mod.split_checkpoint(Path(trained.model_path), tmp_path, "m")
    assert parts and all(p.stat().st_size <= mod.PART_BYTES for p in parts)
    joined = load_detector(mod.join_checkpoint(tmp_path, "m", tmp_path / "joined.pth"))
    original = load_detector(trained.model_path)
    for (k, a), b in zip(
        original.model.state_dict().items(), joined.model.state_dict().values(), strict=True
    ):
        assert torch.allclose(a.float(), b.float(), atol=1e-2, rtol=1e-3), k


def test_slot_health_check_uses_a_map_floor(run, trained, data: Path, tmp_path: Path) -> None:
    """The agent's slot health check runs a detection candidate on a COCO split and holds it to
    an mAP floor (the evaluator's first metric is ``map``)."""
    from agent.engine_cache import EngineCache
    from agent.engines import build_engine
    from agent.model_spec import resolve_model
    from agent.probe import probe_hardware
    from agent.slots import HealthCheckFailed, health_check

    exp = run("export", f"export.checkpoint={trained.model_path}", f"results_dir={tmp_path / 'runs'}")
    built = build_engine(
        resolve_model(exp.onnx_path), profile=probe_hardware(), cache=EngineCache(tmp_path / "cache")
    )
    ok = health_check(built, data / "test", accuracy_floor=0.0)
    assert ok["answered"]
    with pytest.raises(HealthCheckFailed, match=r"map=0\.\d+ is below the floor 0\.9"):
        health_check(built, data / "test", accuracy_floor=0.9)


def test_rtdetr_v2_trains_and_exports(run, tmp_path: Path) -> None:
    v2 = [f"results_dir={tmp_path}", "model.architecture=rtdetr_v2", "model.decoder_layers=2"]
    t = run("train", *v2)
    exp = run("export", *v2, f"export.checkpoint={t.model_path}")
    assert exp.metrics["parity_max_diff_b3"] < 2e-3
    with pytest.raises(SpecError, match="decoder_layers >= 2"):
        run("train", f"results_dir={tmp_path}", "model.architecture=rtdetr_v2")


def test_two_process_gloo_training(run, tmp_path: Path) -> None:
    """train.num_gpus=2: DistributedDataParallel through torchrun (2 CPU processes on gloo)."""
    res = run("train", f"results_dir={tmp_path}", "train.num_gpus=2")
    assert res.metrics["world_size"] == 2 and Path(res.model_path).is_file()
    status = _status(res.output_dir)
    assert sum(s["status"] == "started" for s in status) == 1 and status[-1]["status"] == "succeeded"


def test_agent_bench_cli_reports_map(run, trained, data: Path, tmp_path: Path) -> None:
    """``edgeloop agent bench --eval DIR`` on a COCO split: the device engine's mAP in the report,
    here for the on-device INT8 build calibrated on the COCO train split."""
    import subprocess
    import sys

    exp = run("export", f"export.checkpoint={trained.model_path}", f"results_dir={tmp_path / 'runs'}")
    out = tmp_path / "report.json"
    env = dict(os.environ, EDGELOOP_AGENT_DIR=str(tmp_path / "agent"), EDGELOOP_AGENT_THREADS="1")
    cmd = [sys.executable, "-m", "edgeloop.cli", "agent", "bench", str(exp.onnx_path), "--precision", "int8",
           "--calib", str(data / "train"), "--eval", str(data / "test"), "--scenario", "offline",
           "--duration-ms", "200", "--json", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=SPEC.parents[2], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(out.read_text())
    assert {"map", "map50", "map75"} <= set(report["accuracy"]) and 0 <= report["accuracy"]["map"] <= 1


def test_budget_ends_the_run_and_the_ema_weights_are_exported(run, data: Path) -> None:
    """train.budget_images=8 at batch 4 is 2 steps of an epoch of 3: the schedule decays inside
    them and the run stops in that epoch (validated, kept); model.pth holds the EMA weights (not
    the trained ones, which travel in last.pth for resume) and export turns exactly those into ONNX."""
    import onnxruntime as ort

    from trainer.tasks.detection.data import CocoDetection, open_split
    from trainer.tasks.detection.model import load_detector
    from trainer.tasks.detection.spec import DetectionSpec

    t = run(
        "train",
        "train.epochs=50",
        "train.budget_images=8",
        "train.max_steps_per_epoch=3",
        "train.warmup_epochs=1",
        "train.ema_decay=0.9",
        "train.ema_warmup_steps=1",
        "results_dir=" + str(run.results / "budget"),
    )
    assert t.metrics["stopped_by_budget"] and t.metrics["steps"] == 2 and t.metrics["epochs"] == 1
    assert t.metrics["ema"] and t.metrics["history"][-1]["lr"] < 0.05 * 2e-4  # decayed to the floor
    assert "val_map" in t.metrics["history"][-1]  # the cut-short epoch was validated
    last = torch.load(t.output_dir / "last.pth", map_location="cpu", weights_only=True)
    ema_state, raw_state = last["state_dict"], last["train_state_dict"]
    key = "model.decoder.class_embed.0.weight"
    assert not torch.allclose(ema_state[key], raw_state[key])
    best = load_detector(t.model_path)
    assert torch.equal(best.model.state_dict()[key], ema_state[key])

    exp = run("export", f"export.checkpoint={t.model_path}", "results_dir=" + str(run.results / "budget"))
    spec = DetectionSpec.model_validate({"dataset": {"root": str(data), "image_size": 64}})
    x = torch.stack([CocoDetection(open_split(spec, "val"), 64, spec.dataset.mean, spec.dataset.std)[0][0]])
    sess = ort.InferenceSession(str(exp.onnx_path), providers=["CPUExecutionProvider"])
    onnx_boxes = dict(
        zip(
            [o.name for o in sess.get_outputs()],
            sess.run(None, {sess.get_inputs()[0].name: x.numpy()}),
            strict=True,
        )
    )["boxes"]
    raw = load_detector(t.model_path).model
    raw.load_state_dict(raw_state)
    with torch.no_grad():
        ema_boxes = best.model.eval()(pixel_values=x).pred_boxes.numpy()
        raw_boxes = raw.eval()(pixel_values=x).pred_boxes.numpy()
    assert np.abs(np.sort(onnx_boxes, axis=1) - np.sort(ema_boxes, axis=1)).max() < 1e-3
    assert np.abs(np.sort(onnx_boxes, axis=1) - np.sort(raw_boxes, axis=1)).max() > 1e-3
