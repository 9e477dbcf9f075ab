"""``edgeloop data synth --task classification|detection --out DIR --num-images N --image-size S [--seed K]``
and ``edgeloop data synth --task detection --video OUT.mp4 [--seconds S --fps F --size WxH --seed K]``
(a conveyor clip with per-frame ground truth in OUT.gt.json; trainer/tasks/detection/video.py)."""

from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)
    s = sub.add_parser("synth", help="write a synthetic data set (deterministic per seed)")
    s.add_argument("--task", required=True, choices=["classification", "detection"])
    s.add_argument("--out", help="output folder (an image data set)")
    s.add_argument("--video", help="detection: write a conveyor clip here (mp4) and OUT.gt.json beside it")
    s.add_argument("--seconds", type=float, default=10.0, help="--video: clip length")
    s.add_argument("--fps", type=float, default=30.0, help="--video: frame rate")
    s.add_argument("--size", default="640x360", help="--video: WIDTHxHEIGHT")
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
    if args.video:
        if args.task != "detection":
            print("error: --video needs --task detection", file=sys.stderr)
            return 2
        from trainer.tasks.detection.video import parse_size, synthesize_video

        try:
            summary = synthesize_video(args.video, args.seconds, args.fps, parse_size(args.size), args.seed)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(summary, indent=2))
        return 0
    from trainer.jobs import synthesize_dataset

    if not args.out:
        print("error: --out is required (or --video OUT.mp4 with --task detection)", file=sys.stderr)
        return 2
    try:
        summary = synthesize_dataset(
            args.task, args.out, args.num_images, args.image_size, args.seed, args.workers, args.difficulty
        )
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, default=str))
    return 0
