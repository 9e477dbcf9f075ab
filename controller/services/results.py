"""The results matrix: device class x model version x backend x precision, from device reports.

A cell holds the median over the reports of that combination (several devices of a class, or
repeated measurements), so one noisy device does not decide for its class.
"""

from __future__ import annotations

from statistics import median

from sqlmodel import Session

from controller import crud
from controller.models import MatrixCell, ResultsMatrix


def _med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(median(vals)) if vals else None


def results_matrix(
    *,
    session: Session,
    hardware_class: str | None = None,
    model_version: str | None = None,
    round_id: str | None = None,
) -> ResultsMatrix:
    rows, _ = crud.list_results(
        session=session, hardware_class=hardware_class, model_version=model_version, round_id=round_id
    )
    groups: dict[tuple[str, str, str, str], list] = {}
    for r in rows:
        if r.errors and r.fps is None:
            continue
        groups.setdefault((r.hardware_class, r.model_version, r.backend, r.precision), []).append(r)
    cells = [
        MatrixCell(
            hardware_class=k[0],
            model_version=k[1],
            backend=k[2],
            precision=k[3],
            devices=len({r.device_id for r in g}),
            reports=len(g),
            accuracy=_med([r.accuracy for r in g]),
            fps=_med([r.fps for r in g]),
            latency_p50_ms=_med([r.latency_p50_ms for r in g]),
            latency_p99_ms=_med([r.latency_p99_ms for r in g]),
        )
        for k, g in sorted(groups.items())
    ]
    return ResultsMatrix(
        hardware_classes=sorted({c.hardware_class for c in cells}),
        model_versions=sorted({c.model_version for c in cells}),
        cells=cells,
    )
