"""Accuracy of an engine itself (not of the PyTorch model it came from) on an evaluation shard.

Evaluation dispatches on ``manifest.task`` through a small registry. Classification (top-1/top-5
on an ImageFolder) lives here; other tasks register from their own module, e.g. a detection
evaluator in ``agent/eval_detection.py`` (mAP on a COCO split) registers itself with
``@register_evaluator("detection")`` and is imported on first use through ``_PLUGINS``.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from agent.backends.base import Engine, fixed_batch
from agent.calibration import batch_size_for
from agent.errors import AgentError
from agent.preprocess import ImageFolder, Preprocessor, batched, feeds_for
from protos import artifact_pb2

log = logging.getLogger(__name__)

# (engine, manifest, data dir, batch size, sample limit, progress(done, total)) -> metrics
Evaluator = Callable[
    [Engine, artifact_pb2.Manifest, Path, int, "int | None", "Callable[[int, int], None] | None"],
    dict[str, float],
]
_EVALUATORS: dict[str, Evaluator] = {}
# task -> module that registers its evaluator when imported (optional parts of the agent)
_PLUGINS: dict[str, str] = {"detection": "agent.eval_detection"}


def register_evaluator(task: str) -> Callable[[Evaluator], Evaluator]:
    def decorate(fn: Evaluator) -> Evaluator:
        if task in _EVALUATORS:
            raise ValueError(f"an evaluator for task {task!r} is already registered")
        _EVALUATORS[task] = fn
        return fn

    return decorate


def evaluator_for(task: str) -> Evaluator:
    task = task or "classification"
    if task not in _EVALUATORS and task in _PLUGINS:
        try:
            importlib.import_module(_PLUGINS[task])
        except ImportError as exc:
            raise AgentError(f"no evaluator for task {task!r} on this agent ({exc})") from exc
    if task not in _EVALUATORS:
        raise AgentError(f"no evaluator for task {task!r}; known: {sorted(_EVALUATORS)}")
    return _EVALUATORS[task]


def evaluate(
    engine: Engine,
    manifest: artifact_pb2.Manifest,
    data_dir: str | Path,
    *,
    batch_size: int = 8,
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, float]:
    """Metrics of ``engine`` on ``data_dir`` for the manifest's task (e.g. ``{"top1": 0.93}``)."""
    return evaluator_for(manifest.task)(engine, manifest, Path(data_dir), batch_size, limit, progress)


def _logits_output(engine: Engine, manifest: artifact_pb2.Manifest) -> str:
    """The classification output: the first one of the manifest, else of the engine."""
    if manifest.outputs:
        return manifest.outputs[0].name
    return engine.outputs[0].name


@register_evaluator("classification")
def evaluate_classification(
    engine: Engine,
    manifest: artifact_pb2.Manifest,
    data_dir: Path,
    batch_size: int,
    limit: int | None,
    progress: Callable[[int, int], None] | None,
) -> dict[str, float]:
    folder = ImageFolder.open(data_dir, labels=list(manifest.labels)).subset(limit)
    if any(label < 0 for _, label in folder.samples):
        raise AgentError(f"{data_dir} has no class folders: cannot measure accuracy")
    preprocess = Preprocessor.from_manifest(manifest)
    batch = batch_size_for(manifest, batch_size)
    output = _logits_output(engine, manifest)
    top1 = top5 = seen = 0
    for images, labels in batched(folder, preprocess, batch):
        n = images.shape[0]
        if n < batch and fixed_batch(manifest.inputs[0].shape):  # static batch: pad the last one
            images = np.concatenate([images, np.repeat(images[-1:], batch - n, axis=0)])
        logits = engine.run(feeds_for(manifest, images))[output][:n]
        logits = logits.reshape(n, -1)
        order = np.argsort(-logits, axis=1)
        top1 += int((order[:, 0] == labels).sum())
        top5 += int((order[:, :5] == labels[:, None]).any(axis=1).sum())
        seen += n
        if progress:
            progress(seen, len(folder))
    metrics = {"top1": top1 / seen}
    if len(folder.classes) > 5:
        metrics["top5"] = top5 / seen
    return metrics
