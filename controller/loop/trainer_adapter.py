"""The loop's ``TrainerPort`` over the trainer's job API (``trainer.jobs.run_action``).

Each candidate is a chain of the same actions a person would run by hand (train, prune +
retrain, distill, export), each in its own ``results_dir`` so nothing overwrites a parent, and
each exported with a model version that names its lineage. The controller process runs the
trainer here; a remote trainer would be another implementation of the same port.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from controller.loop.engine import Candidate
from controller.loop.planner import CandidateRequest

log = logging.getLogger(__name__)

# Classification feature bindings per student family: resnets share stage names with a resnet
# teacher; other families distill from the logits alone (bindings need matching module names).
RESNETS = {"resnet18", "resnet34", "resnet50"}


@dataclass
class TrainerSettings:
    task: str
    spec: Path  # the experiment's YAML spec (trainer/specs/classification.yaml)
    work_dir: Path  # one results_dir per candidate under here
    name: str  # model name; versions are "<name>:<slug>"
    baseline_backbone: str = "resnet50"
    train_epochs: int = 10
    retrain_epochs: int = 4
    distill_epochs: int = 8
    overrides: Sequence[str] = field(default_factory=tuple)  # applied to every action (data root, size ...)
    student_overrides: Sequence[str] = field(default_factory=tuple)  # distill only (a smaller head ...)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in text).strip("-")


class SpecTrainer:
    """Trains, compresses and exports candidates with ``trainer.jobs`` (in this process)."""

    def __init__(self, settings: TrainerSettings) -> None:
        self.s = settings
        self.checkpoints: dict[str, Path] = {}  # model version -> model.pth it was exported from

    def _run(self, action: str, results_dir: Path, extra: Sequence[str] = ()):  # noqa: ANN202
        from trainer.jobs import run_action

        overrides = [*self.s.overrides, f"results_dir={results_dir}", *extra]
        log.info("trainer: %s %s %s", self.s.task, action, " ".join(extra))
        return run_action(self.s.task, action, self.s.spec, overrides)

    def _export(self, results_dir: Path, checkpoint: Path, slug: str) -> tuple[str, Path]:
        version = f"{self.s.name}:{slug}"
        res = self._run(
            "export",
            results_dir,
            [f"export.checkpoint={checkpoint}", f"export.name={self.s.name}", f"export.version={version}"],
        )
        self.checkpoints[version] = checkpoint
        return version, Path(res.output_dir)

    def baseline(self) -> Candidate:
        slug = f"base-{self.s.baseline_backbone}"
        rd = self.s.work_dir / slug
        res = self._run(
            "train", rd, [f"model.backbone={self.s.baseline_backbone}", f"train.epochs={self.s.train_epochs}"]
        )
        version, art = self._export(rd, Path(res.model_path), slug)
        return Candidate(version, art, parent="", action="train", backbone=self.s.baseline_backbone)

    def make(self, request: CandidateRequest, parent: Candidate) -> Candidate:
        parent_ckpt = self.checkpoints[parent.version]
        parent_slug = parent.version.split(":", 1)[-1]
        if request.kind == "prune":
            slug = _slug(f"{parent_slug}-p{int(round(request.prune_ratio * 100))}")
            rd = self.s.work_dir / slug
            pruned = self._run(
                "prune", rd, [f"prune.checkpoint={parent_ckpt}", f"prune.ratio={request.prune_ratio}"]
            )
            retrained = self._run(
                "retrain",
                rd,
                [f"retrain.checkpoint={pruned.model_path}", f"train.epochs={self.s.retrain_epochs}"],
            )
            version, art = self._export(rd, Path(retrained.model_path), slug)
            return Candidate(
                version,
                art,
                parent=parent.version,
                action="prune+retrain",
                detail=f"{request.prune_ratio:.0%} of channels removed, retrained {self.s.retrain_epochs} epochs",
                backbone=parent.backbone,
            )
        if request.kind == "distill":
            student = request.student_backbone
            slug = _slug(f"{student}-kd")
            rd = self.s.work_dir / slug
            extra = [
                f"model.backbone={student}",
                f"distill.teacher.backbone={parent.backbone}",
                f"distill.teacher.checkpoint={parent_ckpt}",
                f"train.epochs={self.s.distill_epochs}",
            ]
            extra.extend(self.s.student_overrides)
            if self.s.task == "classification" and not (student in RESNETS and parent.backbone in RESNETS):
                extra.append("distill.bindings=[]")  # detection binds encoder maps, whatever the backbone
            res = self._run("distill", rd, extra)
            version, art = self._export(rd, Path(res.model_path), slug)
            return Candidate(
                version,
                art,
                parent=parent.version,
                action="distill",
                detail=f"student {student} from teacher {parent.version}, {self.s.distill_epochs} epochs",
                backbone=student,
            )
        raise ValueError(f"unknown candidate kind {request.kind!r}; allowed: prune, distill")
