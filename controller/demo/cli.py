"""``edgeloop demo [--quick] [--out DIR]``: the whole loop on this machine, ending in a report.

Synthetic data -> controller (SQLite, a local MQTT broker) -> local agents of three emulated
device classes -> baseline -> rounds of candidates measured on the devices -> choice per class
-> gated rollouts -> ``<out>/report/index.html`` and a summary table. The steps are plain
functions so the end-to-end test drives the same code.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from controller.demo.local_agents import EmulatedClass, LocalFleet, default_classes
from controller.demo.presets import PRESETS, DemoPreset
from controller.demo.stream import annotated_frames, artifact_dir_of, make_clip
from controller.loop.engine import LoopBudget
from controller.loop.goals import GoalError, load_goals, parse_goals
from controller.loop.planner import Ladders
from controller.loop.record import LoopRecord
from controller.loop.trainer_adapter import TrainerSettings

log = logging.getLogger(__name__)

EMULATION_NOTE = (
    "Emulated device classes on one host: every device is a real `edgeloop agent run` process "
    "enrolled over gRPC; the classes differ only in ONNX Runtime threads, CPU affinity and, for "
    "the slowest, a SIGSTOP/SIGCONT duty cycle. {classes}. Benchmarks ran one device at a time."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="tiny settings (a few minutes; what CI runs)")
    parser.add_argument("--out", default="runs/demo", help="work and report directory (default runs/demo)")
    parser.add_argument("--task", default="classification", choices=["classification", "detection"])
    parser.add_argument(
        "--goals", default=None, help="goals YAML (classes: {name: {min_fps: ..}}) instead of the preset's"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="delete --out first (default: reuse its data set)"
    )
    parser.add_argument(
        "--serve", action="store_true", help="keep the controller and dashboard up at the end"
    )


@dataclass
class DemoResult:
    out: Path
    report: Path
    record: LoopRecord
    seconds: float


def say(msg: str, t0: float = 0.0) -> None:
    stamp = f"[{time.monotonic() - t0:6.0f}s] " if t0 else ""
    print(f"{stamp}{msg}", flush=True)


def _enrollment_token(settings) -> str:  # noqa: ANN001
    """The token the controller made on its first start (the local agents enrol with it)."""
    if not settings.enrollment_token:
        raise RuntimeError("the demo controller started without an enrollment token")
    return str(settings.enrollment_token)


def prepare_data(preset: DemoPreset, data_dir: Path) -> dict:
    """The synthetic PCB set (reused when a finished one with the same settings is there)."""
    from trainer.jobs import synthesize_dataset

    stamp = data_dir / "synth.json"
    wanted = {
        "task": preset.task,
        "num_images": preset.num_images,
        "image_size": preset.image_size,
        "difficulty": preset.difficulty,
        "seed": 0,
    }
    if stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")).get("settings") == wanted:
        return json.loads(stamp.read_text(encoding="utf-8"))
    shutil.rmtree(data_dir, ignore_errors=True)
    summary = synthesize_dataset(
        preset.task,
        data_dir,
        preset.num_images,
        preset.image_size,
        seed=0,
        workers=os.cpu_count() or 1,
        **({"difficulty": preset.difficulty} if preset.task == "classification" else {}),
    )
    summary = {**summary, "settings": wanted}
    stamp.write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary


def make_shards(
    data_dir: Path, out_dir: Path, calibration_images: int, task: str = "classification"
) -> tuple[Path, Path]:
    """Evaluation shard = the test split; calibration shard = the first images of each train class
    (detection: the COCO test split at the tar's root, and the first train images)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    eval_tar, calib_tar = out_dir / "eval.tar", out_dir / "calib.tar"
    if task == "detection":
        with tarfile.open(eval_tar, "w") as tar:
            for p in sorted((data_dir / "test").iterdir()):
                tar.add(p, arcname=p.name)
        with tarfile.open(calib_tar, "w") as tar:
            for p in sorted((data_dir / "train").glob("*.png"))[:calibration_images]:
                tar.add(p, arcname=p.name)
        return eval_tar, calib_tar
    with tarfile.open(eval_tar, "w") as tar:
        tar.add(data_dir / "test", arcname="eval")
    classes = sorted(p for p in (data_dir / "train").iterdir() if p.is_dir())
    per_class = max(1, calibration_images // max(1, len(classes)))
    with tarfile.open(calib_tar, "w") as tar:
        for c in classes:
            for img in sorted(c.iterdir())[:per_class]:
                tar.add(img, arcname=f"calib/{c.name}/{img.name}")
    return eval_tar, calib_tar


def wait_for_devices(ctl, fleet: LocalFleet, expected: int, timeout_s: float = 180.0) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        fleet.check_alive()
        if len(ctl.list_devices(online=True)) >= expected:
            return
        time.sleep(0.5)
    raise TimeoutError(f"only {len(ctl.list_devices(online=True))} of {expected} agents came online")


def run_demo(
    preset: DemoPreset,
    out: Path,
    *,
    goals_data: dict | None = None,
    classes: list[EmulatedClass] | None = None,
    serve: bool = False,
) -> DemoResult:
    # the controller's own modules (FastAPI, SQLModel, gRPC) load here, on first use, so that
    # `edgeloop demo --help` and goals refused up front answer at once
    from controller.core.config import get_settings
    from controller.loop.fleet_adapter import FleetSettings
    from controller.loop.on_controller import run_on_controller
    from controller.runtime import Controller

    t0 = time.monotonic()
    goals = parse_goals(goals_data or preset.goals)  # refused before any work
    classes = classes or default_classes()
    missing = sorted(set(goals) - {c.name for c in classes})
    if missing:
        raise ValueError(f"goals name classes the demo does not start: {missing}")
    out.mkdir(parents=True, exist_ok=True)

    say(
        f"1/5 synthetic PCB {preset.task} set: {preset.num_images} images, {preset.image_size} px",
        t0,
    )
    data_dir = out / "data"
    prepare_data(preset, data_dir)
    eval_tar, calib_tar = make_shards(data_dir, out / "shards", preset.calibration_images, preset.task)
    w, h = preset.clip_size
    say(
        f"   conveyor clip for the stream scenario: {preset.clip_seconds:g} s, {preset.clip_fps:g} FPS, {w}x{h}",
        t0,
    )
    clip, clip_tar = make_clip(out / "stream", preset.clip_seconds, preset.clip_fps, preset.clip_size)

    say("2/5 controller (SQLite) and MQTT broker", t0)
    ctl_dir = out / "controller"
    shutil.rmtree(ctl_dir, ignore_errors=True)  # each run is its own fleet history
    settings = get_settings(data_dir=ctl_dir, grpc_host="127.0.0.1", grpc_port=0, http_port=0,
                            http_host="127.0.0.1")  # fmt: skip
    ctl = Controller(settings).start(http=True, telemetry=True)
    fleet = None
    try:
        dashboard = f"http://127.0.0.1:{ctl.http_port}/dashboard#token={settings.api_token}"
        say(f"   dashboard {dashboard}  broker {ctl.public_mqtt_url or 'none'}", t0)
        eval_id = ctl.import_shard(eval_tar, name="pcb-test").id
        calib_id = ctl.import_shard(calib_tar, name="pcb-calib").id
        clip_id = ctl.import_shard(clip_tar, name="conveyor-clip").id

        n_agents = len(classes) * preset.agents_per_class
        say(f"3/5 {n_agents} local agents in {len(classes)} emulated classes", t0)
        fleet = LocalFleet(ctl.grpc_target, _enrollment_token(settings), out / "agents", classes,
                           per_class=preset.agents_per_class, ca_fingerprint=ctl.ca_fingerprint,
                           enroll_target=ctl.enroll_target).start()  # fmt: skip
        for c in classes:
            say(f"   {c.name}: {c.describe()}", t0)
        wait_for_devices(ctl, fleet, n_agents)

        trainer = TrainerSettings(
            task=preset.task,
            spec=Path(__file__).resolve().parents[2] / "trainer" / "specs" / preset.spec_file,
            work_dir=out / "models",
            name="pcb" if preset.task == "classification" else "pcbdet",
            baseline_backbone=preset.baseline_backbone,
            train_epochs=preset.train_epochs,
            retrain_epochs=preset.retrain_epochs,
            distill_epochs=preset.distill_epochs,
            overrides=[
                f"dataset.root={data_dir}",
                f"dataset.image_size={preset.image_size}",
                f"train.batch_size={preset.batch_size}",
                *preset.trainer_overrides,
            ],
            student_overrides=preset.student_overrides,
        )
        shutil.rmtree(out / "models", ignore_errors=True)
        record = LoopRecord(
            task=preset.task,
            metric_name=preset.metric_name,
            emulation_note=EMULATION_NOTE.format(
                classes="; ".join(f"{c.name}: {c.describe()}" for c in classes)
            ),
            rounds=0,
            stream_clip=f"the synthetic conveyor clip ({preset.clip_seconds:g} s, {preset.clip_fps:g} FPS, {w}x{h})",
        )
        say("4/5 the loop: baseline, then candidates until each class meets its goal", t0)
        _, index = run_on_controller(
            ctl.ctx,
            trainer,
            FleetSettings(evaluation_artifact_id=eval_id, calibration_artifact_id=calib_id,
                          duration_ms=preset.bench_duration_ms, stream_clip_artifact_id=clip_id,
                          stream_counts=preset.stream_counts, stream_step_s=preset.stream_step_s),
            goals,
            Ladders(prune_ratios=preset.prune_ratios, students=preset.students, per_round=preset.per_round),
            LoopBudget(max_rounds=preset.max_rounds, min_rounds=preset.min_rounds),
            record,
            out / "report",
            round_id=f"demo-{int(time.time())}",
            progress=lambda msg: say("   " + msg, t0),
            before_report=lambda rec, report_dir: add_annotated_frames(rec, report_dir, out / "models", clip,
                                                                       preset.task),
        )  # fmt: skip
        say("5/5 report", t0)
        print_summary(record)
        say(f"report: {index}", t0)
        if serve:
            say(f"serving the dashboard at {dashboard} (Ctrl-C ends)", t0)
            try:
                while True:
                    time.sleep(3600)
            except KeyboardInterrupt:
                pass
        return DemoResult(out, index, record, time.monotonic() - t0)
    finally:
        if fleet is not None:
            fleet.stop()
        ctl.stop()


def add_annotated_frames(
    record: LoopRecord, report_dir: Path, models_dir: Path, clip: Path, task: str
) -> None:
    """A few frames of the clip annotated by an agent process with the first class's chosen model."""
    chosen = next((c for c in record.classes if c.chosen_version), None)
    folder = artifact_dir_of(models_dir, chosen.chosen_version) if chosen else None
    if chosen is None or folder is None:
        record.failures.append("annotated frames: no chosen model with an artifact folder")
        return
    try:
        frames = annotated_frames(folder, clip, report_dir)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        record.failures.append(f"annotated frames: {exc}")
        return
    record.stream_frames = [f.name for f in frames]
    drawn = (
        "its label for the whole frame, bottom left (trained on board close-ups, so on a conveyor frame "
        "the label shows the pipeline at work, not accuracy)"
        if task == "classification"
        else "its boxes, labels and track ids"
    )
    record.stream_frames_note = (
        f"{len(frames)} frames of {record.stream_clip}, annotated by `edgeloop agent stream` (the agent's "
        f"pipeline, drawn by agent/stream/annotate.py) running {chosen.chosen_version}, chosen for "
        f"{chosen.device_class}: {drawn}."
    )


def print_summary(record: LoopRecord) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"edgeloop demo: what each device class runs ({record.rounds} rounds)")
    for col in (
        "class",
        "goal",
        "chosen",
        "precision",
        "accuracy",
        "img/s",
        "speedup",
        "streams",
        "goal met",
    ):
        table.add_column(col)
    for c in record.classes:
        goal = ", ".join(f"{k}={v}" for k, v in c.goal.items() if v is not None)
        table.add_row(
            c.device_class,
            goal,
            c.chosen_version,
            c.chosen_precision,
            f"{c.chosen_accuracy:.1f} (base {c.baseline_accuracy:.1f})",
            f"{c.chosen_fps:.0f} (base {c.baseline_fps:.0f})",
            f"{c.speedup:.2f}x",
            "-"
            if c.chosen_stream_capacity is None
            else f"{c.chosen_stream_capacity} @ {c.chosen_stream_fps:g} FPS",
            "yes" if c.meets_goal else f"no: {c.reason}",
        )
    Console(width=160).print(table)


def run(args: argparse.Namespace) -> int:
    preset = PRESETS[(args.task, "quick" if args.quick else "full")]
    out = Path(args.out)
    if args.fresh:
        shutil.rmtree(out, ignore_errors=True)
    goals_data = None
    if args.goals:
        try:
            goals = load_goals(args.goals)
        except GoalError as exc:
            print(f"error: {exc}")
            return 2
        goals_data = {"classes": {k: v.model_dump(exclude_none=True) for k, v in goals.items()}}
    result = run_demo(preset, out, goals_data=goals_data, serve=args.serve)
    print(f"done in {result.seconds / 60:.1f} min")
    return 0
