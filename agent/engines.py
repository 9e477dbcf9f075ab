"""Build (or fetch from the cache) the engine for one artifact: the call that benchmark, model
slots and the fleet daemon all make.

``build_engine`` resolves the backend (``auto`` = TensorRT where it can build the precision,
else ONNX Runtime), prepares INT8 calibration data from a folder with the manifest's
preprocessing, computes the engine key and goes through the engine cache.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from agent.backends import BuildOptions, Engine, Precision, resolve_backend
from agent.calibration import DEFAULT_CALIBRATION_SAMPLES, calibration_feeds
from agent.engine_cache import CacheResult, EngineCache, EngineKey
from agent.model_spec import ResolvedModel
from protos import fleet_pb2

log = logging.getLogger(__name__)


@dataclass
class BuiltEngine:
    """An engine ready to run, with where it came from and what building it cost."""

    engine: Engine
    model: ResolvedModel
    key: EngineKey
    cache_hit: bool
    build_time_s: float
    calibration_time_s: float
    load_time_s: float
    notes: list[str] = field(default_factory=list)

    @property
    def backend(self) -> str:
        return self.key.backend

    @property
    def precision(self) -> str:
        return self.key.precision


def record_engine(report: fleet_pb2.Report, built: BuiltEngine) -> fleet_pb2.Report:
    """Copy which engine this is and what building it cost into ``report``: the one place a
    device's reports (deploy, benchmark, calibrate, ``agent bench``) get these fields."""
    report.model_version = built.model.manifest.version
    report.backend = built.backend
    report.precision = built.precision
    report.engine_key = str(built.key)
    report.build_time_s = built.build_time_s
    report.calibration_time_s = built.calibration_time_s
    report.hardware_fingerprint = built.key.fingerprint
    return report


def build_engine(
    model: ResolvedModel,
    *,
    profile: fleet_pb2.HardwareProfile,
    cache: EngineCache,
    backend: str = "auto",
    precision: str | Precision = Precision.FP32,
    device: str | None = None,
    calib_dir: str | Path | None = None,
    calib_samples: int = DEFAULT_CALIBRATION_SAMPLES,
    calibration_method: str = "minmax",
    threads: int | None = None,
    max_batch: int = 32,
) -> BuiltEngine:
    """Raises ``BackendUnavailable``, ``BuildError``, ``CalibrationError`` with the reason."""
    prec = Precision.parse(precision)
    chosen, dev = resolve_backend(backend, profile, prec, device)
    feeds = None
    calibration_id = ""
    if prec is Precision.INT8 and calib_dir is not None:
        feeds, calibration_id, count = calibration_feeds(model.manifest, calib_dir, limit=calib_samples)
        log.info("INT8 calibration: %d images from %s", count, calib_dir)
    options = BuildOptions(
        precision=prec,
        device=dev,
        threads=threads or (profile.cpu_threads_limit or None),
        max_batch=max_batch,
        calibration=feeds,
        calibration_id=calibration_id,
        calibration_method=calibration_method,
    )
    key = EngineKey(
        sha256=model.manifest.sha256,
        backend=chosen.name,
        precision=prec.value,
        runtime_version=chosen.runtime_version(),
        fingerprint=profile.fingerprint,
        device=dev,
        calibration_id=f"{calibration_id}:{calibration_method}" if calibration_id else "",
    )
    result: CacheResult = cache.get_or_build(chosen, key, model.onnx_path, model.manifest, options)
    return BuiltEngine(
        engine=result.engine,
        model=model,
        key=key,
        cache_hit=result.hit,
        build_time_s=result.build_time_s,
        calibration_time_s=result.calibration_time_s,
        load_time_s=result.load_time_s,
        notes=result.notes,
    )
