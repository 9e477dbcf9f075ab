"""Built engines on disk, keyed so that an engine is never used for another key.

Key = artifact sha256 + backend + precision + runtime version + hardware fingerprint,
plus the device (gpu:0 vs dla:0 engines differ) and, for INT8, the calibration data id. An entry
is a directory ``<root>/<key digest>/`` holding the backend's files and ``entry.json`` (the key
and each file's sha256). An entry whose record is unreadable, whose key differs, whose files are
missing or whose bytes do not match is deleted and rebuilt, never loaded. Builds go to a
temporary directory renamed into place, so a crash mid-build leaves no half entry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from agent.backends.base import Backend, BuildInfo, BuildOptions, Engine
from agent.errors import AgentError, BuildError
from protos import artifact_pb2
from protos.manifest import sha256_file

log = logging.getLogger(__name__)

ENTRY_FILE = "entry.json"
ENTRY_SCHEMA = 1


@dataclass(frozen=True)
class EngineKey:
    sha256: str
    backend: str
    precision: str
    runtime_version: str
    fingerprint: str
    device: str = "cpu"
    calibration_id: str = ""

    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:32]

    def __str__(self) -> str:
        return (
            f"{self.sha256[:12]}/{self.backend}/{self.precision}/{self.runtime_version}/"
            f"{self.fingerprint}/{self.device}"
            + (f"/calib:{self.calibration_id}" if self.calibration_id else "")
        )


@dataclass
class CacheResult:
    engine: Engine
    key: EngineKey
    hit: bool
    build_time_s: float  # 0 on a hit
    calibration_time_s: float
    load_time_s: float
    path: Path
    notes: list[str]


class EngineCache:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, key: EngineKey) -> Path:
        return self.root / key.digest()

    def _lock(self, key: EngineKey) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key.digest(), threading.Lock())

    def validate(self, key: EngineKey) -> tuple[bool, str]:
        """(True, "") when the entry exists and is intact, else (False, why)."""
        path = self.path_for(key)
        if not path.exists():
            return False, "absent"
        try:
            record = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return False, f"unreadable entry record ({exc})"
        if record.get("schema") != ENTRY_SCHEMA or record.get("key") != asdict(key):
            return False, "entry record does not match the key"
        files = record.get("files")
        if not isinstance(files, dict) or not files:
            return False, "entry lists no files"
        for name, digest in files.items():
            f = path / name
            if not f.is_file():
                return False, f"missing {name}"
            if sha256_file(f) != digest:
                return False, f"{name} is corrupt (sha256 mismatch)"
        return True, ""

    def evict(self, key: EngineKey) -> None:
        shutil.rmtree(self.path_for(key), ignore_errors=True)

    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())

    def prune(self, max_bytes: int, keep: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Delete least recently used entries until the cache fits in ``max_bytes`` (edge disks are
        small). ``keep`` holds key digests that must stay (the engines of loaded models).
        Returns the digests removed."""
        entries = []
        for record in self.root.glob(f"*/{ENTRY_FILE}"):
            folder = record.parent
            size = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
            entries.append((record.stat().st_mtime, folder.name, size))
        total = sum(size for _, _, size in entries)
        removed = []
        for _, digest, size in sorted(entries):  # oldest use first
            if total <= max_bytes:
                break
            if digest in keep:
                continue
            shutil.rmtree(self.root / digest, ignore_errors=True)
            total -= size
            removed.append(digest)
        if removed:
            log.info("engine cache pruned %d entries to %.1f MiB", len(removed), total / 2**20)
        return removed

    def entries(self) -> list[dict]:
        out = []
        for record in sorted(self.root.glob(f"*/{ENTRY_FILE}")):
            try:
                out.append(json.loads(record.read_text(encoding="utf-8")))
            except (OSError, ValueError):
                continue
        return out

    def get_or_build(
        self,
        backend: Backend,
        key: EngineKey,
        onnx_path: Path,
        manifest: artifact_pb2.Manifest,
        options: BuildOptions,
    ) -> CacheResult:
        with self._lock(key):
            ok, why = self.validate(key)
            path = self.path_for(key)
            if ok:
                start = time.perf_counter()
                try:
                    engine = backend.load(path, manifest, options)
                except AgentError as exc:  # intact bytes the runtime refuses: rebuild
                    log.warning("cached engine %s failed to load (%s): rebuilding", key, exc)
                else:
                    record = json.loads((path / ENTRY_FILE).read_text(encoding="utf-8"))
                    (path / ENTRY_FILE).touch()  # last use, for prune()
                    log.info("engine cache hit %s", key)
                    return CacheResult(
                        engine,
                        key,
                        True,
                        0.0,
                        0.0,
                        time.perf_counter() - start,
                        path,
                        record.get("notes", []),
                    )
            elif why != "absent":
                log.warning("engine cache entry %s is invalid (%s): rebuilding", key, why)
            self.evict(key)
            info = self._build(backend, key, onnx_path, manifest, options)
            start = time.perf_counter()
            engine = backend.load(path, manifest, options)
            return CacheResult(
                engine,
                key,
                False,
                info.build_time_s,
                info.calibration_time_s,
                time.perf_counter() - start,
                path,
                info.notes,
            )

    def _build(
        self,
        backend: Backend,
        key: EngineKey,
        onnx_path: Path,
        manifest: artifact_pb2.Manifest,
        options: BuildOptions,
    ) -> BuildInfo:
        tmp = self.root / f".tmp-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            start = time.perf_counter()
            info = backend.build(onnx_path, manifest, options, tmp)
            info.build_time_s = info.build_time_s or (time.perf_counter() - start)
            files = {name: sha256_file(tmp / name) for name in info.files}
            record = {
                "schema": ENTRY_SCHEMA,
                "key": asdict(key),
                "files": files,
                "build_time_s": info.build_time_s,
                "calibration_time_s": info.calibration_time_s,
                "notes": info.notes,
                "model_version": manifest.version,
                "created": time.time(),
            }
            (tmp / ENTRY_FILE).write_text(json.dumps(record, indent=2), encoding="utf-8")
            try:
                tmp.rename(self.path_for(key))
            except OSError:  # another process (agents may share a cache) finished first
                if not self.validate(key)[0]:
                    raise
                log.info("engine %s was built concurrently elsewhere; using that one", key)
        except FileNotFoundError as exc:
            raise BuildError(f"build of {key} did not write its files: {exc}") from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("built engine %s in %.2fs", key, info.build_time_s)
        return info
