"""Multi-GPU training: the same train action with ``train.num_gpus=1`` and ``=N``, in one run.

Each run is the trainer's own ``train`` action (``trainer.jobs.run_action``; more than one
process goes through torchrun and DistributedDataParallel, NCCL on GPUs, gloo on CPU processes).
The batch is per process, so N processes see N times the images per step. Reported per run:
images/s over the epochs after the first (the first pays for start-up and cuDNN autotuning;
summed over processes), and the validation accuracy after the last epoch. Then the scaling
efficiency, images/s(N) / (N x images/s(1)), and the accuracy difference (goal: efficiency
>= 0.9, accuracy within noise).

    # the issue's figure: two GPUs, resnet50 at 224 px, mixed precision, channels_last
    python benchmarks/ddp_scaling.py --gpus 1 2 --image-size 224 --num-images 9000 --batch-size 256 --workers 14
    # what any machine can run: 2 gloo CPU processes on a tiny set (correctness, not speed)
    python benchmarks/ddp_scaling.py --gpus 1 2 --device cpu --backbone resnet18 --image-size 32 \
        --num-images 240 --epochs 2 --batch-size 16 --workers 0
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trainer.datasets.synth_pcb import synthesize  # noqa: E402
from trainer.jobs import run_action  # noqa: E402


def steady_images_per_s(history: list[dict]) -> float:
    """Median images/s of the epochs after the first (all epochs when there is only one)."""
    rates = [float(h["images_per_s"]) for h in history]
    return statistics.median(rates[1:] if len(rates) > 1 else rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--gpus", type=int, nargs="+", default=[1, 2], help="process counts, the first is the base"
    )
    ap.add_argument("--work", default="runs/ddp_scaling")
    ap.add_argument("--data", help="an existing ImageFolder root (default: synthesize into --work/data)")
    ap.add_argument("--num-images", type=int, default=9000)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--difficulty", default="easy", choices=["standard", "easy"])
    ap.add_argument("--backbone", default="resnet50")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=256, help="per process")
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--workers", type=int, default=8, help="DataLoader workers per process")
    ap.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work = Path(args.work)
    data = Path(args.data) if args.data else work / "data"
    if not (data / "test").is_dir():
        synthesize(
            data,
            args.num_images,
            args.image_size,
            seed=0,
            workers=max(1, args.workers),
            difficulty=args.difficulty,
        )
    rows = []
    for n in args.gpus:
        spec = {
            "results_dir": str(work / f"np{n}"),
            "seed": 0,
            "model": {"backbone": args.backbone},
            "dataset": {"root": str(data), "image_size": args.image_size},
            "train": {
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "num_gpus": n,
                "device": args.device,
                "amp": True,
                "channels_last": True,
                "optimizer": "adamw",
                "lr": args.lr,
                "warmup_epochs": 0,
                "num_workers": args.workers,
            },
        }
        t0 = time.perf_counter()
        res = run_action("classification", "train", spec)
        wall = time.perf_counter() - t0
        history = json.loads((res.output_dir / "history.json").read_text(encoding="utf-8"))
        rows.append(
            {
                "processes": n,
                "images_per_s": steady_images_per_s(history),
                "images_per_s_epochs": [h["images_per_s"] for h in history],
                "val_accuracy": history[-1].get("val_accuracy"),
                "wall_s": round(wall, 1),
            }
        )
        print(f"  num_gpus={n}: {json.dumps(rows[-1])}", flush=True)
    import torch

    where = (
        torch.cuda.get_device_name(0) if args.device != "cpu" and torch.cuda.is_available() else "CPU (gloo)"
    )
    print(
        f"\n{args.backbone}, {args.image_size} px, batch {args.batch_size} per process, {args.epochs} epochs, {where}\n"
    )
    print("| processes | images/s (epochs 2+) | val accuracy | wall s | scaling efficiency |")
    print("| --- | --- | --- | --- | --- |")
    base = rows[0]
    for r in rows:
        eff = r["images_per_s"] / (r["processes"] / base["processes"] * base["images_per_s"])
        r["scaling_efficiency"] = eff
        acc = "-" if r["val_accuracy"] is None else f"{100 * r['val_accuracy']:.1f}%"
        print(f"| {r['processes']} | {r['images_per_s']:.0f} | {acc} | {r['wall_s']} | {eff:.2f} |")
    if len(rows) > 1:
        last = rows[-1]
        print(
            f"\nscaling efficiency {last['scaling_efficiency']:.2f} (goal >= 0.90); val accuracy "
            f"{100 * (last['val_accuracy'] or 0):.1f}% vs {100 * (base['val_accuracy'] or 0):.1f}%"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "args": vars(args)}, indent=1) + "\n", encoding="utf-8"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
