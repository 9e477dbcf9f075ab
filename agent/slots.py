"""Model slots: an active model that serves and a candidate that must prove itself first.

``deploy`` builds the candidate (through the engine cache), health-checks it - it loads, answers
a known input with outputs of the right shapes and finite values, and reaches the accuracy floor
on the evaluation folder when one is given - and only then switches it in atomically (one
reference assignment under a lock). A candidate that fails is dropped; the active model never
stops serving, and requests in flight on the old model finish on it (they hold a reference).
An artifact whose bytes do not match its manifest's sha256 is refused before anything is built.

Events (``built``, ``switched``, ``rolled_back``, ``deploy_failed``) go to ``on_event`` - the
telemetry publisher in the agent, a list in tests.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from agent.backends.base import Engine
from agent.durable import atomic_write
from agent.engine_cache import EngineCache
from agent.engines import BuiltEngine, build_engine
from agent.errors import AgentError, HealthCheckFailed, ModelNotFound, ModelNotReady
from agent.evaluate import evaluate
from agent.model_spec import resolve_model
from agent.preprocess import ImageFolder, Preprocessor, feeds_for
from protos import artifact_pb2, fleet_pb2
from protos.manifest import ManifestError, manifest_from_json, manifest_to_json

log = logging.getLogger(__name__)
STATE_FILE = "slots.json"
STATE_SCHEMA = 2

EventSink = Callable[[str, str, dict], None]  # (event, model_version, details)


@dataclass
class LoadedModel:
    built: BuiltEngine
    backend: str
    precision: str
    source: dict  # how to load it again (onnx path, manifest path, backend, precision, device)
    loaded_at: float = field(default_factory=time.time)
    health: dict = field(default_factory=dict)

    @property
    def engine(self) -> Engine:
        return self.built.engine

    @property
    def manifest(self) -> artifact_pb2.Manifest:
        return self.built.model.manifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def version(self) -> str:
        return self.manifest.version


@dataclass
class DeployResult:
    ok: bool
    model_version: str
    activated: bool = False
    reason: str = ""
    accuracy: dict[str, float] = field(default_factory=dict)
    cache_hit: bool = False
    build_time_s: float = 0.0
    calibration_time_s: float = 0.0
    engine_key: str = ""


def health_check(
    built: BuiltEngine,
    eval_dir: str | Path | None = None,
    accuracy_floor: float = 0.0,
    eval_limit: int | None = 256,
) -> dict:
    """Raises ``HealthCheckFailed`` with the reason; returns what was measured."""
    engine, manifest = built.engine, built.model.manifest
    try:
        if eval_dir is not None:
            first = ImageFolder.open(eval_dir).samples[0][0]
            image = Preprocessor.from_manifest(manifest).load(first)[None]
            feeds = feeds_for(manifest, image)
        else:
            feeds = {}
            for spec in engine.inputs:
                shape = [1 if i == 0 or d < 0 else d for i, d in enumerate(spec.shape)]  # one sample
                feeds[spec.name] = np.zeros(shape, dtype=spec.dtype)
        fixed = engine.fixed_batch
        if fixed and fixed > 1:
            feeds = {k: np.repeat(v, fixed, axis=0) for k, v in feeds.items()}
        outputs = engine.run(feeds)
    except Exception as exc:
        raise HealthCheckFailed(f"the candidate does not answer a known input: {exc}") from exc
    for spec in engine.outputs:
        out = outputs.get(spec.name)
        if out is None:
            raise HealthCheckFailed(f"output {spec.name!r} missing from the answer")
        if np.issubdtype(out.dtype, np.floating) and not np.isfinite(out).all():
            raise HealthCheckFailed(f"output {spec.name!r} holds NaN or Inf")
    result: dict = {"answered": True}
    if eval_dir is not None and accuracy_floor > 0:
        try:
            metrics = evaluate(engine, manifest, eval_dir, limit=eval_limit)
        except AgentError as exc:
            raise HealthCheckFailed(f"accuracy could not be measured: {exc}") from exc
        result["accuracy"] = metrics
        key = "top1" if "top1" in metrics else next(iter(metrics))
        if metrics[key] < accuracy_floor:
            raise HealthCheckFailed(
                f"accuracy {key}={metrics[key]:.4f} is below the floor {accuracy_floor:.4f}"
            )
    return result


class ModelSlots:
    def __init__(
        self,
        *,
        profile: fleet_pb2.HardwareProfile,
        cache: EngineCache,
        threads: int | None = None,
        state_dir: Path | None = None,
        on_event: EventSink | None = None,
    ) -> None:
        self.profile = profile
        self.cache = cache
        self.threads = threads
        self.state_dir = state_dir
        self.on_event = on_event or (lambda event, version, details: None)
        self._lock = threading.RLock()  # guards the references below
        self._deploy_lock = threading.Lock()  # one deploy at a time
        self._active: LoadedModel | None = None
        self._candidate: LoadedModel | None = None
        self._previous: LoadedModel | None = None

    # -- what is loaded
    @property
    def active(self) -> LoadedModel | None:
        return self._active

    @property
    def candidate(self) -> LoadedModel | None:
        return self._candidate

    @property
    def previous(self) -> LoadedModel | None:
        return self._previous

    def get(self, name: str, version: str = "") -> LoadedModel:
        """The active model if ``name`` (and ``version``, when given) designate it."""
        model = self._active  # one read: a switch cannot tear this request
        if model is None:
            raise ModelNotReady("no model is active on this agent")
        if name not in (model.name, model.version):
            raise ModelNotFound(f"model {name!r} is not loaded (serving {model.name!r})")
        if version and version not in (model.version, model.version.rpartition(":")[2]):
            raise ModelNotFound(f"version {version!r} of {name!r} is not active (active: {model.version})")
        return model

    # -- deploy, switch, rollback
    def _load(self, onnx_path, manifest, backend, precision, calib_dir, device) -> LoadedModel:
        model = resolve_model(onnx_path, manifest)  # sha256 mismatch -> ArtifactError
        built = build_engine(model, profile=self.profile, cache=self.cache, backend=backend, precision=precision,
                             device=device, calib_dir=calib_dir, threads=self.threads)  # fmt: skip
        source = {
            "onnx": str(Path(onnx_path).resolve()),
            # the resolved manifest itself (name, version, preprocessing): a fleet deploy gets it as
            # a message, and a restart must serve the same model under the same name
            "manifest_json": manifest_to_json(built.model.manifest),
            "backend": built.backend,
            "precision": built.precision,
            "device": built.key.device,
            "calib_dir": str(calib_dir) if calib_dir else None,
            "engine_key": str(built.key),
        }
        return LoadedModel(built=built, backend=built.backend, precision=built.precision, source=source)

    def deploy(
        self,
        onnx_path: str | Path,
        manifest: artifact_pb2.Manifest | str | Path | None = None,
        *,
        backend: str = "auto",
        precision: str = "fp32",
        device: str | None = None,
        calib_dir: str | Path | None = None,
        eval_dir: str | Path | None = None,
        accuracy_floor: float = 0.0,
        activate: bool = True,
    ) -> DeployResult:
        """Build + health-check a candidate, then (``activate``) switch to it. Never raises for a
        bad candidate: the result says why, and the active model keeps serving."""
        with self._deploy_lock:
            version = ""
            try:
                candidate = self._load(onnx_path, manifest, backend, precision, calib_dir, device)
                version = candidate.version
                self.on_event("built", version, {
                    "backend": candidate.backend, "precision": candidate.precision,
                    "cache_hit": candidate.built.cache_hit, "build_time_s": round(candidate.built.build_time_s, 3),
                    "calibration_time_s": round(candidate.built.calibration_time_s, 3),
                })  # fmt: skip
                if candidate.built.calibration_time_s:
                    self.on_event(
                        "calibrated", version, {"calibration_time_s": candidate.built.calibration_time_s}
                    )
                candidate.health = health_check(candidate.built, eval_dir, accuracy_floor)
            except AgentError as exc:
                log.warning("candidate %s refused: %s", version or onnx_path, exc)
                self.on_event("deploy_failed", version, {"reason": str(exc), "kind": type(exc).__name__})
                with self._lock:
                    self._candidate = None
                    self._save_state()
                return DeployResult(ok=False, model_version=version, reason=str(exc))
            with self._lock:
                self._candidate = candidate
                if not activate:
                    self._save_state()  # a gated candidate waits in its slot across a restart
            result = DeployResult(
                ok=True,
                model_version=version,
                accuracy=candidate.health.get("accuracy", {}),
                cache_hit=candidate.built.cache_hit,
                build_time_s=candidate.built.build_time_s,
                calibration_time_s=candidate.built.calibration_time_s,
                engine_key=str(candidate.built.key),
            )
            if activate:
                self.switch()
                result.activated = True
            return result

    def switch(self, model_version: str = "") -> LoadedModel:
        """Make the candidate active (atomically); the old active becomes ``previous``."""
        with self._lock:
            candidate = self._candidate
            active = self._active
            if model_version and candidate is None and active is not None and active.version == model_version:
                return active  # already active: a repeated command is not an error
            if candidate is None or (model_version and model_version != candidate.version):
                if model_version and self._previous is not None and self._previous.version == model_version:
                    return self.rollback(to_version=model_version, reason="switch back")
                raise ModelNotFound(
                    f"no healthy candidate {model_version!r} to switch to"
                    if model_version
                    else "no healthy candidate to switch to"
                )
            old = self._active
            self._active, self._previous, self._candidate = candidate, old, None
            self._save_state()
        self.on_event("switched", candidate.version, {"from": old.version if old else None})
        log.info("switched to %s (was %s)", candidate.version, old.version if old else None)
        return candidate

    def rollback(self, to_version: str = "", reason: str = "") -> LoadedModel:
        """Return to the version active before the last switch."""
        with self._lock:
            prev = self._previous
            if prev is None or (to_version and to_version != prev.version):
                raise ModelNotFound(
                    f"no previous version {to_version!r} to roll back to"
                    if to_version
                    else "nothing to roll back to"
                )
            old = self._active
            self._active, self._previous = prev, old
            self._save_state()
        self.on_event("rolled_back", prev.version, {"from": old.version if old else None, "reason": reason})
        log.info("rolled back to %s (from %s): %s", prev.version, old.version if old else None, reason)
        return prev

    def drop_previous(self, reason: str = "") -> LoadedModel | None:
        """Forget the previous slot (an unloaded model is not switched back to); returns it."""
        with self._lock:
            prev, self._previous = self._previous, None
            self._save_state()
        if prev is not None:
            self.on_event("unloaded", prev.version, {"reason": reason})
        return prev

    # -- survive restarts
    def _save_state(self) -> None:
        """Record every slot (what ``restore`` needs to serve the same models again), atomically."""
        if self.state_dir is None:
            return
        state = {
            "schema": STATE_SCHEMA,
            "active": self._active.source if self._active else None,
            "candidate": self._candidate.source if self._candidate else None,
            "previous": self._previous.source if self._previous else None,
        }
        atomic_write(self.state_dir / STATE_FILE, json.dumps(state, indent=2))

    def _restore_one(self, slot: str, src: dict) -> LoadedModel:
        manifest: artifact_pb2.Manifest | str | None
        if src.get("manifest_json"):
            try:
                manifest = manifest_from_json(src["manifest_json"])
            except ManifestError as exc:
                raise AgentError(f"saved manifest of the {slot} model: {exc}") from exc
        else:  # schema 1 saved only a manifest path, when there was one
            manifest = src.get("manifest")
        loaded = self._load(src["onnx"], manifest, src["backend"], src["precision"],
                            src.get("calib_dir"), src.get("device"))  # fmt: skip
        if src.get("engine_key") and str(loaded.built.key) != src["engine_key"]:
            log.warning("restored %s model %s under engine %s (saved: %s)", slot, loaded.version,
                        loaded.built.key, src["engine_key"])  # fmt: skip
        return loaded

    def restore(self) -> LoadedModel | None:
        """Reload the models recorded by the last change of slots (active, candidate, previous):
        same manifest, name, version, backend, precision, calibration and engine."""
        path = self.state_dir / STATE_FILE if self.state_dir is not None else None
        if path is None or not path.is_file():
            return None
        try:
            state = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:  # atomic writes make this a foreign or damaged file
            log.error("slot state %s is unreadable (%s); serving nothing until the next deploy", path, exc)
            return None
        loaded = {}
        for slot in ("previous", "candidate", "active"):
            src = state.get(slot)
            if not src:
                continue
            try:
                loaded[slot] = self._restore_one(slot, src)
            except (AgentError, KeyError, TypeError) as exc:
                log.warning("could not restore the %s model: %s", slot, exc)
        with self._lock:
            self._active = loaded.get("active")
            self._candidate = loaded.get("candidate")
            self._previous = loaded.get("previous")
        if self._active is not None:
            log.info("restored %s (%s %s) as the active model", self._active.version,
                     self._active.backend, self._active.precision)  # fmt: skip
        return self._active
