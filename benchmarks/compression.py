"""Teacher vs pruned + distilled + INT8 student on the synthetic PCB set, in one run.

Everything goes through the trainer's own actions (``trainer.jobs.run_action``), so this is
also an end-to-end check of the pipeline a user runs:

  teacher:  train (resnet50) -> export (FP32 ONNX)
  student:  train (resnet18) -> prune (channel ratio, round_to 8) -> distill from the teacher
            into the pruned model (KL on logits + a layer3 feature binding with projection)
            -> export -> quantize (ONNX Runtime static Q/DQ, uint8 act / int8 per-channel weights)

Then each ONNX model is measured here with ONNX Runtime on CPU: test-split accuracy, file size,
images/s (batch ``--batch``, ``--threads`` intra-op threads, median of ``--repeats`` timed runs
after warm-up) and single-image latency. Goal: student >= 4x teacher images/s with <= 1.0 point
accuracy drop. Prints a markdown table; ``--json`` writes the numbers.

    python benchmarks/compression.py --quick            # minutes: a smoke run, numbers meaningless
    python benchmarks/compression.py                    # the reported run (64 px, 1800 images)

Training a resnet50 that learns the task takes a GPU; the CPU numbers belong to this machine. So
the work can be split in two, like ``detection_compression.py``:

    python benchmarks/compression.py --work W --parts-out OUT ...     # GPU machine: train, write parts
    python benchmarks/compression.py --work W --from-parts OUT ...    # here: join, export, quantize, measure

``--parts-out`` writes the teacher's and the distilled student's checkpoints as fp16 parts of at
most 15 MiB (``benchmarks/_checkpoint_parts.py``) plus ``train_summary.json``; ``--from-parts``
joins them into ``W`` and runs every step after training (export, quantize) on this machine.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _checkpoint_parts import join_checkpoint, split_checkpoint  # noqa: E402

from trainer.datasets.folder import preprocess_numpy, scan_split  # noqa: E402
from trainer.datasets.synth_pcb import synthesize  # noqa: E402
from trainer.jobs import run_action  # noqa: E402


class Measured:
    """One ONNX model under ONNX Runtime CPU: accuracy once, then timed in rounds that
    alternate between the models (so load from other processes hits every model alike)."""

    def __init__(self, onnx_path: Path, data: Path, image_size: int, batch: int, threads: int):
        import onnxruntime as ort

        from protos.manifest import load_manifest

        self.path = onnx_path
        self.man = load_manifest(onnx_path.with_name("manifest.json"))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        self.sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
        self.name = self.sess.get_inputs()[0].name
        samples = scan_split(data, "test", list(self.man.labels))
        pre = self.man.preprocessing
        x_all = preprocess_numpy([p for p, _ in samples.items], image_size, pre.mean, pre.std)
        y_all = np.array([t for _, t in samples.items])
        pred = np.concatenate(
            [
                self.sess.run(None, {self.name: x_all[i : i + 64]})[0].argmax(1)
                for i in range(0, len(x_all), 64)
            ]
        )
        self.accuracy = float((pred == y_all).mean())
        self.test_images = len(y_all)
        self.num_classes = len(self.man.labels)
        self.xb = np.ascontiguousarray(np.resize(x_all, (batch, *x_all.shape[1:])))
        self.batch = batch
        self.rates: list[float] = []
        self.latencies: list[float] = []
        for _ in range(5):
            self.sess.run(None, {self.name: self.xb})

    def time_round(self, seconds: float = 1.0) -> None:
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            self.sess.run(None, {self.name: self.xb})
            n += 1
        self.rates.append(self.batch * n / (time.perf_counter() - t0))
        for _ in range(10):
            t1 = time.perf_counter()
            self.sess.run(None, {self.name: self.xb[:1]})
            self.latencies.append((time.perf_counter() - t1) * 1000)

    def result(self) -> dict:
        return {
            "onnx": str(self.path),
            "precision": self.man.precision,
            "accuracy": self.accuracy,
            "test_images": self.test_images,
            "onnx_mb": self.path.stat().st_size / 1e6,
            "images_per_s": statistics.median(self.rates),
            "images_per_s_rounds": [round(r, 1) for r in self.rates],
            "latency_ms_p50": statistics.median(self.latencies),
            "params_m": self.man.complexity.get("params", 0) / 1e6,
            "gmacs": self.man.complexity.get("macs", 0) / 1e9,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default="runs/compression", help="data and results go here")
    ap.add_argument("--data", help="an existing ImageFolder root (default: synthesize into --work/data)")
    ap.add_argument("--num-images", type=int, default=1800)
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--teacher", default="resnet50")
    ap.add_argument("--student", default="resnet18")
    ap.add_argument("--prune-ratio", type=float, default=0.5)
    ap.add_argument("--teacher-epochs", type=int, default=12)
    ap.add_argument("--student-epochs", type=int, default=12)
    ap.add_argument("--distill-epochs", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=32, help="training batch")
    ap.add_argument("--batch", type=int, default=16, help="ONNX Runtime measurement batch")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (32 px, 120 images, 1 epoch each)")
    ap.add_argument("--skip-training", action="store_true", help="reuse the models already under --work")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("--difficulty", default="standard", choices=["standard", "easy"], help="synthetic set")
    ap.add_argument("--workers", type=int, default=1, help="DataLoader workers while training")
    ap.add_argument("--parts-out", help="after training, write the checkpoints here as transferable parts")
    ap.add_argument("--from-parts", help="join checkpoints from here instead of training, then go on")
    args = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.quick:
        args.num_images, args.image_size = 120, 32
        args.teacher_epochs = args.student_epochs = args.distill_epochs = 1
        args.repeats = 2
    work = Path(args.work)
    data = Path(args.data) if args.data else work / "data"
    if not args.data and not (data / "test").is_dir():
        synthesize(
            data, args.num_images, args.image_size, seed=0, workers=args.workers, difficulty=args.difficulty
        )
    common = {
        "seed": 0,
        "dataset": {
            "root": str(data),
            "image_size": args.image_size,
            "augmentation": {"random_resized_crop": False, "rotation": 0, "vflip": 0.5, "hflip": 0.5},
        },
        "train": {
            "batch_size": args.batch_size,
            "optimizer": "adamw",
            "lr": 0.002,
            "warmup_epochs": 0,
            "num_workers": args.workers,
            "device": args.device,
        },
        "quantize": {"num_calibration_samples": 128, "calibrate_method": "minmax"},
    }

    def spec(results: str, backbone: str, epochs: int, **extra) -> dict:
        s = json.loads(json.dumps(common))
        s["results_dir"] = str(work / results)
        s["model"] = {"backbone": backbone}
        s["train"]["epochs"] = epochs
        for k, v in extra.items():
            s.setdefault(k, {}).update(v)
        return s

    t_spec = spec("teacher", args.teacher, args.teacher_epochs)
    s_spec = spec(
        "student",
        args.student,
        args.student_epochs,
        prune={"ratio": args.prune_ratio},
        distill={
            "teacher": {"backbone": args.teacher, "checkpoint": str(work / "teacher/train/model.pth")},
            "student_checkpoint": str(work / "student/prune/model.pth"),
            "bindings": [
                {
                    "teacher_module_name": "layer3",
                    "student_module_name": "layer3",
                    "criterion": "L2",
                    "weight": 0.5,
                }
            ],
        },
        export={"checkpoint": str(work / "student/distill/model.pth"), "name": "pcb-student"},
    )
    timings: dict[str, float] = {}
    step_metrics: dict[str, dict] = {}

    def step(name: str, task_spec: dict, action: str, overrides=()):
        t0 = time.perf_counter()
        res = run_action("classification", action, task_spec, list(overrides))
        timings[name] = round(time.perf_counter() - t0, 1)
        step_metrics[name] = {k: v for k, v in res.metrics.items() if isinstance(v, (int, float, str))}
        print(
            f"  {name}: {timings[name]} s {json.dumps({k: v for k, v in res.metrics.items() if isinstance(v, (int, float))})[:300]}",
            flush=True,
        )
        return res

    teacher_ckpt, student_ckpt = work / "teacher/train/model.pth", work / "student/distill/model.pth"
    if args.from_parts:
        join_checkpoint(Path(args.from_parts), "teacher", teacher_ckpt)
        join_checkpoint(Path(args.from_parts), "student", student_ckpt)
    elif not args.skip_training:
        step("teacher train", t_spec, "train")
        step("student train", s_spec, "train")
        step("student prune", s_spec, "prune")
        s_distill = dict(s_spec, train={**s_spec["train"], "epochs": args.distill_epochs, "lr": 0.001})
        step("student distill", s_distill, "distill")
    if args.parts_out:
        out = Path(args.parts_out)
        files = split_checkpoint(teacher_ckpt, out, "teacher") + split_checkpoint(
            student_ckpt, out, "student"
        )
        summary = {
            "timings_s": timings,
            "metrics": step_metrics,
            "parts": [f.name for f in files],
            "args": vars(args),
        }
        (out / "train_summary.json").write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    if not args.skip_training:
        step("teacher export", t_spec, "export", ["export.name=pcb-teacher"])
        step("student export", s_spec, "export")
        step("student quantize", s_spec, "quantize", ["quantize.evaluate=false"])
    image_size = args.image_size
    models = {
        f"teacher {args.teacher} FP32": work / "teacher/export/model.onnx",
        f"student {args.student} pruned {args.prune_ratio:g} + distilled, FP32": work
        / "student/export/model.onnx",
        f"student {args.student} pruned {args.prune_ratio:g} + distilled, INT8 QDQ": work
        / "student/quantize/model.onnx",
    }
    measured = {k: Measured(v, data, image_size, args.batch, args.threads) for k, v in models.items()}
    for _ in range(args.repeats):
        for m in measured.values():
            m.time_round()
    rows = {k: m.result() for k, m in measured.items()}
    names = list(rows)
    teacher = rows[names[0]]
    print(
        f"\nONNX Runtime CPU, {args.threads} threads, batch {args.batch}, {image_size}px, test split {teacher['test_images']} images\n"
    )
    print(
        "| model | accuracy | ONNX MB | params M | GMACs | images/s | speed-up | latency p50 ms (batch 1) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, r in rows.items():
        print(
            f"| {name} | {100 * r['accuracy']:.1f}% | {r['onnx_mb']:.1f} | {r['params_m']:.2f} | {r['gmacs']:.3f} | "
            f"{r['images_per_s']:.0f} | {r['images_per_s'] / teacher['images_per_s']:.2f}x | {r['latency_ms_p50']:.2f} |"
        )
    final = rows[names[-1]]
    speedup = final["images_per_s"] / teacher["images_per_s"]
    drop = 100 * (teacher["accuracy"] - final["accuracy"])
    chance = 1.0 / next(iter(measured.values())).num_classes
    if teacher["accuracy"] < 1.5 * chance:
        verdict = f"NOT MEANINGFUL: the teacher is at chance level ({100 * chance:.1f}%), so the accuracy goal is untested"
    else:
        verdict = "MET" if speedup >= 4 and drop <= 1.0 else "NOT MET"
    print(
        f"\nstudent INT8 vs teacher: {speedup:.2f}x images/s (goal >= 4x), accuracy drop {drop:+.1f} points (goal <= 1.0)"
        f" -> {verdict}"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "rows": rows,
                    "timings_s": timings,
                    "speedup": speedup,
                    "accuracy_drop_points": drop,
                    "args": vars(args),
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
