"""What to train next: the candidates of the next round, from which classes still miss.

The planner proposes; only device measurements judge. It walks two ladders configured per run:
channel-prune ratios of the baseline (prune + retrain) and smaller student backbones distilled
from the baseline (the teacher), and it prunes the fastest accurate student once students exist.
INT8 is not a trainer candidate here: each device calibrates its own INT8 engine from the FP32
ONNX, because one INT8 file does not fit every backend (ONNX Runtime on a CPU wants uint8
activations with per-channel int8 weights, TensorRT symmetric int8 Q/DQ only where it runs INT8
kernels; docs/agent.md), and every candidate is measured at each precision its hardware offers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from controller.loop.selection import Choice


@dataclass(frozen=True)
class CandidateRequest:
    kind: str  # "prune" | "distill"
    parent_version: str
    prune_ratio: float = 0.0
    student_backbone: str = ""

    @property
    def label(self) -> str:
        if self.kind == "prune":
            return f"prune {self.prune_ratio:.2f} of {self.parent_version}"
        return f"distill {self.parent_version} -> {self.student_backbone}"


@dataclass
class Ladders:
    prune_ratios: list[float] = field(default_factory=lambda: [0.3, 0.5, 0.7])
    students: list[str] = field(
        default_factory=lambda: ["resnet18", "mobilenet_v3_large", "mobilenet_v3_small"]
    )
    per_round: int = 2  # trainer jobs a round may start


def plan_next_round(
    choices: dict[str, Choice],
    baseline_version: str,
    tried: set[CandidateRequest],
    ladders: Ladders,
    students_made: dict[str, str] | None = None,
    explore: bool = False,
) -> list[CandidateRequest]:
    """Candidates for the next round; empty when every class meets its goal or ladders are spent.

    ``students_made`` maps student backbone -> model version of students already trained.
    ``explore`` keeps walking the speed ladders although every class meets its goal (the loop's
    ``min_rounds``): more measured points on the Pareto front, never a worse choice, since the
    choice is re-made from all measurements.
    """
    missing = [c for c in choices.values() if not c.meets_goal]
    if not missing and not explore:
        return []
    # How much faster the worst class must get decides how far down the ladders to step.
    needs_speed = (
        explore
        and not missing
        or any("fps" in c.reason or "p90" in c.reason or c.chosen is None for c in missing)
    )
    needs_accuracy = any("accuracy" in c.reason for c in missing)
    proposals: list[CandidateRequest] = []
    if needs_speed or not needs_accuracy:
        for student in ladders.students:
            req = CandidateRequest("distill", baseline_version, student_backbone=student)
            if req not in tried:
                proposals.append(req)
                break
        for ratio in ladders.prune_ratios:
            req = CandidateRequest("prune", baseline_version, prune_ratio=ratio)
            if req not in tried:
                proposals.append(req)
                break
        for version in (students_made or {}).values():
            for ratio in ladders.prune_ratios[:2]:
                req = CandidateRequest("prune", version, prune_ratio=ratio)
                if req not in tried:
                    proposals.append(req)
                    break
    else:
        # Fast enough but not accurate enough: milder compression first.
        for ratio in sorted(ladders.prune_ratios):
            req = CandidateRequest("prune", baseline_version, prune_ratio=ratio / 2)
            if req not in tried:
                proposals.append(req)
                break
    return proposals[: ladders.per_round]
