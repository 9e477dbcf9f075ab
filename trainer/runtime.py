"""How an action runs: its results dir, status file, log, device, distributed setup.

Every action of every task goes through :func:`execute`: it makes ``<results_dir>/<action>/``,
writes the resolved spec (``spec.yaml``), a log file (``log.txt``), a JSON-lines ``status.json``
(``started`` -> ``progress`` ... -> ``succeeded`` with KPIs, or ``failed`` with the failure kind
and reason) and the action's ``metrics.json``. Under torchrun only rank 0 writes files.

A re-run never overwrites a good run's records with a failed one: when ``status.json`` ends in
``succeeded``, the new run writes ``attempt.spec.yaml`` and ``attempt.status.json`` instead, and
they replace ``spec.yaml`` / ``status.json`` only when it succeeds; a failed attempt leaves them
beside the good run's records (see :func:`run_records`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger("trainer")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ------------------------------------------------------------------ outputs
@dataclass
class ActionOutput:
    """What an action returns; :func:`execute` turns it into an ActionResult."""

    metrics: dict[str, Any] = field(default_factory=dict)
    model_path: Path | None = None
    onnx_path: Path | None = None
    manifest_path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ActionResult:
    """The controller-facing result of one action (plain data, no torch objects)."""

    task: str
    action: str
    output_dir: Path
    status: str
    metrics: dict[str, Any]
    model_path: Path | None = None
    onnx_path: Path | None = None
    manifest_path: Path | None = None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in self.__dict__.items() if v is not None}


# ------------------------------------------------------------------ status
class StatusWriter:
    """TAO-style JSON-lines status: one object per line, appended, flushed at once."""

    def __init__(self, path: Path | None, *, task: str, action: str):
        self.path = path
        self.task = task
        self.action = action

    def write(self, status: str, **fields: Any) -> None:
        if self.path is None:
            return
        rec = {"ts": utc_now(), "task": self.task, "action": self.action, "status": status, **fields}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec, default=str) + "\n")

    def progress(self, **kpis: Any) -> None:
        self.write("progress", **kpis)


def _succeeded(status_path: Path) -> bool:
    try:
        lines = status_path.read_text(encoding="utf-8").splitlines()
        return bool(lines) and json.loads(lines[-1]).get("status") == "succeeded"
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class RunRecords:
    """Where a run writes its resolved spec and its status; ``attempt`` when they must replace a
    good run's records only on success."""

    spec: Path
    status: Path
    attempt: bool

    def commit(self, out_dir: Path) -> None:
        """The run succeeded: its records become the action's records (atomic renames)."""
        if self.attempt:
            os.replace(self.spec, out_dir / "spec.yaml")
            os.replace(self.status, out_dir / "status.json")


def run_records(out_dir: Path) -> RunRecords:
    """The record paths for a new run in ``out_dir`` (stale attempt records are removed)."""
    for name in ("attempt.spec.yaml", "attempt.status.json"):
        (out_dir / name).unlink(missing_ok=True)
    if _succeeded(out_dir / "status.json"):
        return RunRecords(out_dir / "attempt.spec.yaml", out_dir / "attempt.status.json", True)
    (out_dir / "status.json").unlink(missing_ok=True)  # one run's status per file
    return RunRecords(out_dir / "spec.yaml", out_dir / "status.json", False)


def latest_status(out_dir: Path) -> Path:
    """The status file of the latest run in ``out_dir`` (a running or failed attempt's, if any)."""
    attempt = out_dir / "attempt.status.json"
    return attempt if attempt.is_file() else out_dir / "status.json"


# ------------------------------------------------------------------ distributed
def dist_env() -> tuple[int, int, int]:
    """(rank, local_rank, world_size) from torchrun's environment; (0, 0, 1) otherwise."""
    return (
        int(os.environ.get("RANK", 0)),
        int(os.environ.get("LOCAL_RANK", 0)),
        int(os.environ.get("WORLD_SIZE", 1)),
    )


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------ device
def select_device(requested: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    requested = getattr(requested, "value", requested)
    if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device=cuda but torch.cuda.is_available() is False")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def cpu_cores() -> int:
    """Cores this process may run on (the affinity mask, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def auto_workers(device: torch.device, world_size: int = 1) -> int:
    """Loader processes when the spec leaves them unset: on a GPU, every core of this process's
    share but one (the main process feeds the GPU), at most 16; on a CPU, where the model needs
    the cores itself, at most 2."""
    per_process = max(1, cpu_cores() // max(1, world_size))
    if device.type == "cuda":
        return max(2, min(16, per_process - 1))
    return max(0, min(2, per_process - 1))


def amp_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bf16 where the GPU supports it (no loss scaling needed), else fp16; None on CPU."""
    if not enabled or device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


# ------------------------------------------------------------------ context
@dataclass
class RunContext:
    task: str
    action: str
    results_dir: Path
    out_dir: Path
    status: StatusWriter
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def default_checkpoint(self, action: str, name: str = "model.pth") -> Path:
        return self.results_dir / action / name


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        return self.rank == 0 or record.levelno >= logging.WARNING


@contextmanager
def _file_log(path: Path | None, rank: int):
    root = logging.getLogger()
    handler: logging.Handler | None = None
    flt = _RankFilter(rank)
    for h in root.handlers:
        h.addFilter(flt)
    if path is not None:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        if root.level > logging.INFO or root.level == logging.NOTSET:
            root.setLevel(logging.INFO)
    try:
        yield
    finally:
        for h in root.handlers:
            h.removeFilter(flt)
        if handler is not None:
            root.removeHandler(handler)
            handler.close()


def _failure_kind(exc: BaseException) -> str:
    from trainer.spec import SpecError

    if isinstance(exc, SpecError):
        return "spec"
    if isinstance(exc, (FileNotFoundError, NotADirectoryError)):
        return "missing_path"
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "out_of_memory"
    if isinstance(exc, (ValueError, KeyError, TypeError)):
        return "invalid_input"
    return "runtime"


def execute(
    task: str,
    action: str,
    spec: Any,
    fn: Callable[[Any, RunContext], ActionOutput],
) -> ActionResult:
    """Run ``fn(spec, ctx)`` inside the results-dir/status/log machinery (this process)."""
    from trainer.spec import spec_to_dict

    rank, local_rank, world = dist_env()
    results_dir = Path(spec.results_dir)
    out_dir = results_dir / action
    main = rank == 0
    records = None
    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        records = run_records(out_dir)
        records.spec.write_text(_yaml(spec_to_dict(spec)), encoding="utf-8")
    status = StatusWriter(records.status if records else None, task=task, action=action)
    ctx = RunContext(task, action, results_dir, out_dir, status, rank, local_rank, world)
    started = time.monotonic()
    status.write("started", pid=os.getpid(), world_size=world, host=socket.gethostname())
    with _file_log(out_dir / "log.txt" if main else None, rank):
        log.info("%s %s -> %s", task, action, out_dir)
        try:
            out = fn(spec, ctx)
        except BaseException as exc:
            status.write(
                "failed",
                kind=_failure_kind(exc),
                reason=f"{type(exc).__name__}: {exc}",
                traceback=traceback.format_exc(limit=8),
            )
            raise
    elapsed = time.monotonic() - started
    metrics = dict(out.metrics)
    metrics.setdefault("elapsed_s", round(elapsed, 3))
    if main:
        (out_dir / "metrics.json").write_text(
            json.dumps(metrics, indent=2, default=str) + "\n", encoding="utf-8"
        )
    status.write("succeeded", kpis=_scalar_kpis(metrics), elapsed_s=round(elapsed, 3))
    if records is not None:
        records.commit(out_dir)
    return ActionResult(
        task=task,
        action=action,
        output_dir=out_dir,
        status="succeeded",
        metrics=metrics,
        model_path=out.model_path,
        onnx_path=out.onnx_path,
        manifest_path=out.manifest_path,
        elapsed_s=round(elapsed, 3),
    )


def _scalar_kpis(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}


def _yaml(data: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False)
