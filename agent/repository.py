"""Triton's model repository extension (index, load, unload) mapped onto the model slots.

An agent serves one active model, so the extension is a view of the slots plus an optional
folder of models (``<root>/<name>/model.onnx`` with its ``manifest.json``):

- index: the active model (READY), the previous slot and the candidate (UNAVAILABLE, with the
  reason) and every folder of the repository not loaded.
- load NAME: the active model -> nothing to do; the previous slot -> switch back to it; a folder
  of the repository -> a deploy through the slots (sha256 against the manifest, build, health
  check), the same checks as a fleet deploy, then the switch. A candidate that fails is refused
  and the active model keeps serving.
- unload NAME: refused while it is the only model (nothing would answer); else the slots go back
  to the previous model and the unloaded one is forgotten. Unloading the previous slot forgets it.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path

from agent.errors import HealthCheckFailed, ModelNotFound, Refused
from agent.slots import LoadedModel, ModelSlots
from protos.manifest import ManifestError, load_manifest

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")  # a folder name, never a path


@dataclass(frozen=True)
class ModelIndex:
    name: str
    version: str
    state: str  # READY | UNAVAILABLE | LOADING (Triton's states)
    reason: str = ""

    def as_json(self) -> dict:
        out = {"name": self.name, "version": self.version, "state": self.state}
        if self.reason:
            out["reason"] = self.reason
        return out


def _matches(model: LoadedModel | None, name: str) -> bool:
    return model is not None and name in (model.name, model.version)


class ModelRepository:
    def __init__(self, slots: ModelSlots, root: Path | None = None, *, backend: str = "auto",
                 precision: str = "fp32", lock: threading.Lock | None = None) -> None:  # fmt: skip
        """``lock``: held while a load or unload runs (the runtime's device-work lock, so a
        repository load never overlaps a fleet deploy)."""
        self.slots = slots
        self.root = root
        self.backend, self.precision = backend, precision
        self._lock = lock or threading.Lock()

    def _folder(self, name: str) -> Path | None:
        if self.root is None or not NAME.match(name) or ".." in name:
            return None
        onnx = self.root / name / "model.onnx"
        return onnx if onnx.is_file() else None

    def _folders(self) -> list[tuple[str, str]]:
        """(folder name, version in its manifest or "") of every model in the repository."""
        if self.root is None or not self.root.is_dir():
            return []
        found = []
        for onnx in sorted(self.root.glob("*/model.onnx")):
            version = ""
            try:
                version = load_manifest(onnx.parent / "manifest.json").version
            except ManifestError:
                pass
            found.append((onnx.parent.name, version))
        return found

    def index(self, ready_only: bool = False) -> list[ModelIndex]:
        s = self.slots
        out = []
        if s.active is not None:
            out.append(ModelIndex(s.active.name, s.active.version, "READY"))
        if s.candidate is not None:
            out.append(
                ModelIndex(
                    s.candidate.name,
                    s.candidate.version,
                    "UNAVAILABLE",
                    "candidate slot: healthy, not switched in",
                )
            )
        if s.previous is not None:
            out.append(
                ModelIndex(
                    s.previous.name,
                    s.previous.version,
                    "UNAVAILABLE",
                    "previous slot: load it to switch back",
                )
            )
        loaded = {m.version for m in out}
        for folder, version in self._folders():
            if version not in loaded:
                out.append(ModelIndex(folder, version, "UNAVAILABLE", "in the repository, not loaded"))
        return [m for m in out if m.state == "READY"] if ready_only else out

    def load(self, name: str) -> LoadedModel:
        with self._lock:
            s = self.slots
            active, previous = s.active, s.previous
            if active is not None and _matches(active, name):
                return active
            if previous is not None and _matches(previous, name):
                return s.rollback(previous.version, reason="repository load")
            onnx = self._folder(name)
            if onnx is None:
                raise ModelNotFound(f"model {name!r} is neither loaded nor in this agent's model repository")
            manifest = onnx.parent / "manifest.json"
            result = s.deploy(onnx, manifest if manifest.is_file() else None, backend=self.backend,
                              precision=self.precision)  # fmt: skip
            if not result.ok:
                raise HealthCheckFailed(f"model {name!r} was not loaded: {result.reason}")
            loaded = s.active
            if loaded is None:  # a concurrent unload is impossible under the lock; say so if it happens
                raise HealthCheckFailed(f"model {name!r} loaded but no model is active")
            return loaded

    def unload(self, name: str) -> None:
        with self._lock:
            s = self.slots
            if _matches(s.previous, name) and not _matches(s.active, name):
                s.drop_previous(reason="repository unload")
                return
            if not _matches(s.active, name):
                raise ModelNotFound(f"model {name!r} is not loaded")
            if s.previous is None:
                raise Refused(f"model {name!r} is the only model this agent serves: load another one first")
            s.rollback(s.previous.version, reason="repository unload")
            s.drop_previous(reason="repository unload")
