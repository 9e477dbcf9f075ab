"""FP32 vs INT8 on this host, per backbone: throughput, latency and accuracy of the engine the
agent builds (ONNX Runtime CPU; INT8 = the agent's on-device static Q/DQ quantization with uint8
activations and int8 per-channel weights, calibrated on images preprocessed by the manifest).

INT8 is not always faster on a CPU: depthwise convolutions (MobileNet, EfficientNet) often lose,
and the table shows it - which is why the fleet measures on the device instead of assuming.

Accuracy: with random-init models (default, no weight download) the column is the top-1
agreement of INT8 with FP32 on the evaluation images; with ``--checkpoint NAME=DIR`` (a trainer
artifact: model.onnx + manifest.json) and ``--eval DIR`` (its labelled ImageFolder), it is top-1.

    python benchmarks/precision_matrix.py
    python benchmarks/precision_matrix.py --models resnet18,mobilenet_v3_small,efficientnet_b0 --threads 2
    python benchmarks/precision_matrix.py --checkpoint pcb=runs/pcb/export --eval data/pcb/val
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _agent_models import depthwise_convs, export_torchvision, synthetic_images  # noqa: E402

from agent.bench import BenchConfig, benchmark_engine  # noqa: E402
from agent.engine_cache import EngineCache  # noqa: E402
from agent.engines import build_engine  # noqa: E402
from agent.evaluate import evaluate  # noqa: E402
from agent.model_spec import resolve_model  # noqa: E402
from agent.preprocess import ImageFolder, Preprocessor, batched, feeds_for  # noqa: E402
from agent.probe import probe_hardware  # noqa: E402


def logits_of(engine, manifest, folder: ImageFolder, batch: int = 8) -> np.ndarray:
    pre = Preprocessor.from_manifest(manifest)
    out = manifest.outputs[0].name if manifest.outputs else engine.outputs[0].name
    return np.concatenate([engine.run(feeds_for(manifest, x))[out] for x, _ in batched(folder, pre, batch)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="resnet18,mobilenet_v3_small,efficientnet_b0")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR",
                    help="a trainer artifact to measure instead of a random-init torchvision model")  # fmt: skip
    ap.add_argument("--eval", type=Path, help="labelled ImageFolder for --checkpoint top-1")
    ap.add_argument("--images", type=int, default=200, help="synthetic evaluation images")
    ap.add_argument("--calib", type=int, default=64, help="calibration images")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--duration-ms", type=int, default=3000, help="per LoadGen run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating FP32/INT8 timing rounds (median)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "edgeloop-precision-matrix")
    ap.add_argument("--json", type=Path, help="write the rows here")
    args = ap.parse_args()

    work = args.workdir
    images = synthetic_images(work / "images", args.images)
    calib = synthetic_images(work / "calib", args.calib, seed=1)
    profile = probe_hardware(threads=args.threads, hardware_class=None)
    cache = EngineCache(work / f"engines-{time.strftime('%Y%m%d-%H%M%S')}")  # fresh: build times are measured
    config = BenchConfig(scenarios=("singlestream", "offline"), duration_ms=args.duration_ms,
                         min_queries=32, batch_size=args.batch, samples=32)  # fmt: skip
    targets = [(name, None) for name in args.models.split(",") if name]
    targets += [(spec.split("=", 1)[0], Path(spec.split("=", 1)[1])) for spec in args.checkpoint]
    rows = []
    for name, artifact in targets:
        onnx_path = (artifact / "model.onnx") if artifact else export_torchvision(name, work / name, images)
        model = resolve_model(onnx_path)
        eval_dir = args.eval if artifact else images
        dw, convs = depthwise_convs(onnx_path)
        built = {
            precision: build_engine(
                model,
                profile=profile,
                cache=cache,
                backend="onnxruntime",
                precision=precision,
                calib_dir=calib if precision == "int8" else None,
                calib_samples=args.calib,
                threads=args.threads,
            )  # fmt: skip
            for precision in ("fp32", "int8")
        }
        # accuracy first, then timing rounds that alternate FP32 / INT8 so the neighbours' load
        # and clock drift hit both; the median round is reported
        accuracy: dict[str, tuple[str, float, float]] = {}
        reference = None
        for precision, b in built.items():
            if artifact and eval_dir:
                accuracy[precision] = (
                    "top1",
                    evaluate(b.engine, model.manifest, eval_dir)["top1"],
                    float("nan"),
                )
            else:
                logits = logits_of(b.engine, model.manifest, ImageFolder.open(eval_dir), args.batch)
                reference = logits if reference is None else reference
                agree = float((logits.argmax(1) == reference.argmax(1)).mean())
                rel_err = float(np.linalg.norm(logits - reference) / max(np.linalg.norm(reference), 1e-12))
                accuracy[precision] = ("agreement_with_fp32", agree, rel_err)
        runs: dict[str, list] = {p: [] for p in built}
        for _ in range(args.rounds):
            for precision, b in built.items():
                runs[precision].append(benchmark_engine(b, config=config))
        for precision, b in built.items():
            offline = [next(s for s in r.scenarios if s.scenario == "offline") for r in runs[precision]]
            single = [next(s for s in r.scenarios if s.scenario == "singlestream") for r in runs[precision]]
            acc_name, acc, rel_err = accuracy[precision]
            rows.append({
                "model": name, "precision": precision, "depthwise_convs": dw, "convs": convs,
                "offline_fps": statistics.median(s.throughput_fps for s in offline),
                "offline_fps_rounds": [round(s.throughput_fps, 1) for s in offline],
                "singlestream_p50_ms": statistics.median(s.latency_p50_ms for s in single),
                "singlestream_p99_ms": statistics.median(s.latency_p99_ms for s in single),
                acc_name: acc, "logits_rel_error": rel_err,
                "build_s": b.build_time_s, "calibration_s": b.calibration_time_s,
                "valid": all(s.valid for r in runs[precision] for s in r.scenarios),
                "errors": sorted({e for r in runs[precision] for e in r.errors}),
            })  # fmt: skip
            b.engine.close()
            print(
                f"  {name} {precision}: {rows[-1]['offline_fps_rounds']} img/s", file=sys.stderr, flush=True
            )

    print(f"\nload average {os.getloadavg()[0]:.2f} at the end (other processes share these cores); "
          f"medians of {args.rounds} alternating rounds, LoadGen runs of {args.duration_ms} ms")  # fmt: skip
    print(f"host: {profile.cpu_model}, {profile.cpu_cores} cores visible, threads {args.threads}, "
          f"flags {','.join(profile.cpu_flags)}; onnxruntime {profile.runtimes.get('onnxruntime')}; "
          f"python {platform.python_version()}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    header = (f"| model | dw convs | precision | offline img/s (b{args.batch}) | INT8/FP32 | single-stream p50 ms "
              "| accuracy | logits rel. err | build+calib s |")  # fmt: skip
    print(header)
    print("|" + "---|" * 9)
    fp32 = {r["model"]: r["offline_fps"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        acc_key = "top1" if "top1" in r else "agreement_with_fp32"
        label = "top-1" if acc_key == "top1" else "agree w/ fp32"
        speed = r["offline_fps"] / fp32[r["model"]] if fp32.get(r["model"]) else float("nan")
        print(f"| {r['model']} | {r['depthwise_convs']}/{r['convs']} | {r['precision']} | {r['offline_fps']:.1f}{'' if r['valid'] else ' (!)'} "
              f"| {speed:.2f}x | {r['singlestream_p50_ms']:.2f} | {label} {r[acc_key]:.3f} | {r['logits_rel_error']:.4f} "
              f"| {r['build_s'] + r['calibration_s']:.1f} |")  # fmt: skip
    if not all(r["valid"] for r in rows):
        print("(!) a LoadGen run missed its minimum duration or query count (estimate off under load)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
