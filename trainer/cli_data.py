"""``edgeloop data synth --task classification|detection --out DIR --num-images N --image-size S [--seed K]``."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("synth", help="write a synthetic data set (deterministic per seed)")
    s.add_argument("--task", required=True, choices=["classification", "detection"])
    s.add_argument("--out", required=True, help="output folder")
    s.add_argument("--num-images", type=int, default=600, help="images in total over train/val/test")
    s.add_argument("--image-size", type=int, default=128)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--workers", type=int, default=1, help="processes (the files do not depend on it)")
    s.add_argument(
        "--difficulty",
        default="standard",
        choices=["standard", "easy"],
        help="classification: easy = larger defects, kinder camera (what the demo trains on)",
    )


def run(args: argparse.Namespace) -> int:
    from trainer.jobs import synthesize_dataset

    try:
        summary = synthesize_dataset(
            args.task, args.out, args.num_images, args.image_size, args.seed, args.workers, args.difficulty
        )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0
