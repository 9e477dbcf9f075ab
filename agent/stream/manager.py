"""The agent's pipelines by name: create, list, update, delete, sources added and removed while
they run, and (with a ``state_dir``) kept on disk so they start again after a restart.

Each pipeline's spec is written atomically (temporary file, fsync, rename) to
``<state_dir>/<name>.json`` on every change; ``restore()`` starts every spec found there, and one
that no longer starts (its file gone, its model refused) is logged with its name and skipped.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from agent.stream.pipeline import Pipeline, PipelineError
from agent.stream.spec import PipelineSpec, SourceSpec, SpecError, load_pipeline_spec, source_spec

log = logging.getLogger(__name__)


class StreamManager:
    def __init__(
        self,
        *,
        slots=None,
        build: Callable | None = None,
        telemetry: Callable[[], object] = lambda: None,
        state_dir: str | Path | None = None,
    ) -> None:
        self.slots = slots
        self.build = build
        self.telemetry = telemetry
        self.state_dir = Path(state_dir) if state_dir else None
        self._pipelines: dict[str, Pipeline] = {}
        self._lock = threading.RLock()

    # -- persistence
    def _save(self, spec: PipelineSpec) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        path = self.state_dir / f"{spec.name}.json"
        tmp = path.with_suffix(".json.tmp")
        with tmp.open("w", encoding="utf-8") as f:
            f.write(spec.model_dump_json(indent=2))
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)

    def _forget(self, name: str) -> None:
        if self.state_dir is not None:
            (self.state_dir / f"{name}.json").unlink(missing_ok=True)

    def restore(self) -> list[str]:
        """Start every pipeline saved by the last run; returns the names started."""
        if self.state_dir is None or not self.state_dir.is_dir():
            return []
        started = []
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                spec = load_pipeline_spec(json.loads(path.read_text(encoding="utf-8")))
                self.create(spec, save=False)
                started.append(spec.name)
            except (OSError, ValueError, SpecError, PipelineError) as exc:
                log.error("pipeline saved in %s did not start again: %s", path.name, exc)
        return started

    # -- pipelines
    def create(self, spec: PipelineSpec, save: bool = True) -> Pipeline:
        with self._lock:
            if spec.name in self._pipelines:
                raise PipelineError(f"a pipeline named {spec.name!r} is already running")
            pipeline = Pipeline(spec, slots=self.slots, build=self.build, telemetry=self.telemetry).start()
            self._pipelines[spec.name] = pipeline
            if save:
                self._save(spec)
            return pipeline

    def update(self, spec: PipelineSpec) -> Pipeline:
        """Replace a pipeline by a new spec (stop, start: the simple and honest way)."""
        with self._lock:
            self.delete(spec.name, forget=False)
            return self.create(spec)

    def delete(self, name: str, forget: bool = True) -> None:
        with self._lock:
            pipeline = self._pipelines.pop(name, None)
            if pipeline is None:
                raise PipelineError(f"no pipeline named {name!r}")
            if forget:
                self._forget(name)
        pipeline.stop()

    def get(self, name: str) -> Pipeline:
        with self._lock:
            if name not in self._pipelines:
                raise PipelineError(f"no pipeline named {name!r}")
            return self._pipelines[name]

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._pipelines)

    def add_source(self, name: str, source: SourceSpec) -> None:
        pipeline = self.get(name)
        pipeline.add_source(source)
        self._save(pipeline.spec)

    def remove_source(self, name: str, source_id: str) -> None:
        pipeline = self.get(name)
        pipeline.remove_source(source_id)
        self._save(pipeline.spec)

    def apply(
        self, action: str, name: str, spec_json: str = "", source_json: str = "", source_id: str = ""
    ) -> str:
        """One change from the controller (fleet ``Pipeline`` command), as JSON strings; returns a
        line saying what was done. Raises ``SpecError``/``PipelineError`` with the reason."""
        if action in ("create", "update"):
            try:
                data = json.loads(spec_json or "{}")
            except ValueError as exc:
                raise SpecError(f"pipeline spec is not JSON: {exc}") from None
            if not isinstance(data, dict):
                raise SpecError("pipeline spec must be a JSON object")
            data.setdefault("name", name)
            if name and data["name"] != name:
                raise SpecError(f"the spec names pipeline {data['name']!r}, the command {name!r}")
            spec = load_pipeline_spec(data)
            pipeline = self.create(spec) if action == "create" else self.update(spec)
            return f"pipeline {spec.name} {action}d: {len(pipeline.sources)} sources, model {pipeline.spec.model.path}"
        if action == "delete":
            self.delete(name)
            return f"pipeline {name} deleted"
        if action == "add_source":
            try:
                source = source_spec(json.loads(source_json or "{}"))
            except ValueError as exc:
                raise SpecError(f"source is not valid: {exc}") from None
            self.add_source(name, source)
            return f"pipeline {name}: source {source.id} added"
        if action == "remove_source":
            self.remove_source(name, source_id)
            return f"pipeline {name}: source {source_id} removed"
        raise PipelineError(
            f"unknown pipeline action {action!r} (create | update | delete | add_source | remove_source)"
        )

    def stats(self) -> list[dict]:
        with self._lock:
            pipelines = list(self._pipelines.values())
        return [p.stats() for p in pipelines]

    def close(self) -> None:
        """Stop every pipeline (their specs stay on disk for the next start)."""
        with self._lock:
            pipelines = list(self._pipelines.values())
            self._pipelines.clear()
        for p in pipelines:
            p.stop()
