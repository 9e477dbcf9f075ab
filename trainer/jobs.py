"""Job entry points: the only trainer functions the controller calls (plain data in and out).

``run_action("classification", "train", "spec.yaml", ["train.epochs=3"])`` validates the spec
and its paths before any work, runs the action (through torchrun when ``train.num_gpus > 1``)
and returns an :class:`ActionResult` (output dir, metrics, model / ONNX / manifest paths).
``synthesize_dataset`` writes a synthetic data set for a task.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from trainer.runtime import ActionResult, dist_env, execute, free_port, latest_status
from trainer.spec import SpecError, load_spec, spec_to_dict
from trainer.tasks.registry import get_task

__all__ = ["ActionResult", "SpecError", "run_action", "resolve_spec", "synthesize_clip", "synthesize_dataset"]

log = logging.getLogger(__name__)


def resolve_spec(
    task: str, spec: str | Path | Mapping[str, Any], overrides: Sequence[str] = (), action: str | None = None
):
    """The validated spec object (raises SpecError naming the key); checks paths for ``action``."""
    t = get_task(task)
    obj = load_spec(t.schema, spec, overrides)
    if action is not None:
        t.get_action(action)
        if t.check is not None:
            t.check(obj, action)
    return obj


def _num_processes(obj: Any) -> int:
    train = getattr(obj, "train", None)
    return int(getattr(train, "num_gpus", 1) or 1)


def run_action(
    task: str,
    action: str,
    spec: str | Path | Mapping[str, Any],
    overrides: Sequence[str] = (),
    *,
    untrusted: bool = False,
) -> ActionResult:
    """Run one action. ``untrusted``: the spec came from someone who may not run code here (a REST
    job), so a spec that asks to unpickle legacy checkpoints is refused before anything runs."""
    t = get_task(task)
    act = t.get_action(action)
    obj = resolve_spec(task, spec, overrides, action)
    if untrusted and getattr(getattr(obj, "model", None), "allow_unsafe_pickle", False):
        raise SpecError(
            "key 'model.allow_unsafe_pickle': refused for a job submitted through the API (unpickling "
            "runs code from the file); convert the checkpoint with the command line on a trusted host"
        )
    n = _num_processes(obj)
    if act.distributed and n > 1 and dist_env()[2] == 1:
        return _launch_torchrun(task, action, obj, n)
    return execute(task, action, obj, act.fn)


def _launch_torchrun(task: str, action: str, obj: Any, n: int) -> ActionResult:
    """Re-run this action under torchrun with ``n`` processes (one per GPU; gloo on CPU)."""
    import torch

    device = getattr(getattr(obj.train, "device", "auto"), "value", "auto")
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda and torch.cuda.device_count() < n:
        raise SpecError(
            f"key 'train.num_gpus': {n} processes asked for but only {torch.cuda.device_count()} CUDA device(s)"
        )
    if not use_cuda:
        log.warning("train.num_gpus=%d without CUDA: running %d CPU processes on gloo", n, n)
    out_dir = Path(obj.results_dir) / action
    with tempfile.TemporaryDirectory() as tmp:
        spec_file = Path(tmp) / "spec.json"
        spec_file.write_text(json.dumps(spec_to_dict(obj)), encoding="utf-8")
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=1",
            f"--nproc_per_node={n}",
            f"--master_port={free_port()}",
            "-m",
            "trainer.ddp_worker",
            task,
            action,
            str(spec_file),
        ]
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
        log.info("launching: %s", " ".join(cmd))
        proc = subprocess.run(cmd, env=env, check=False)
    if proc.returncode != 0:
        status = latest_status(out_dir)
        reason = f"see {status}"
        if status.is_file():
            for line in status.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if rec.get("status") == "failed":
                    reason = rec.get("reason", reason)
        raise RuntimeError(f"distributed {task} {action} failed (exit {proc.returncode}): {reason}")
    metrics = json.loads((out_dir / "metrics.json").read_text(encoding="utf-8"))
    model = out_dir / "model.pth"
    return ActionResult(
        task=task,
        action=action,
        output_dir=out_dir,
        status="succeeded",
        metrics=metrics,
        model_path=model if model.exists() else None,
        elapsed_s=float(metrics.get("elapsed_s", 0.0)),
    )


def synthesize_dataset(
    task: str,
    out: str | Path,
    num_images: int,
    image_size: int,
    seed: int = 0,
    workers: int = 1,
    difficulty: str = "standard",
) -> dict:
    """Write a synthetic data set for ``task`` under ``out``; returns a summary dict.

    ``difficulty`` (classification only): ``standard`` or ``easy`` (see trainer/datasets/synth_pcb.py).
    """
    if task == "detection":
        try:
            from trainer.tasks.detection.synth import synthesize
        except ImportError as exc:
            raise RuntimeError(
                f"the detection task provides no synthesizer (trainer.tasks.detection.synth): {exc}"
            ) from exc
        return synthesize(out, num_images, image_size, seed)
    t = get_task(task)
    if t.synthesize is None:
        raise RuntimeError(f"task {task!r} has no synthetic data generator")
    if difficulty != "standard":
        return t.synthesize(out, num_images, image_size, seed, workers=workers, difficulty=difficulty)
    if workers > 1:
        return t.synthesize(out, num_images, image_size, seed, workers=workers)
    return t.synthesize(out, num_images, image_size, seed)


def synthesize_clip(
    out: str | Path, seconds: float, fps: float, size: tuple[int, int], seed: int = 0
) -> dict:
    """The synthetic conveyor clip (H.264 mp4, ground truth in ``out`` with ``.gt.json``) that
    ``edgeloop data synth --task detection --video`` writes; the demo's stream reference clip."""
    from trainer.tasks.detection.video import synthesize_video

    return synthesize_video(out, seconds, fps, size, seed)
