"""Crash-safe files: what the agent must find intact after a power cut or a SIGKILL.

``atomic_write`` writes a temporary file beside the target, fsyncs it, renames it over the
target and fsyncs the folder, so a reader sees either the old content or the new one, never a
torn file, and the rename itself survives a power cut.
"""

from __future__ import annotations

import os
from pathlib import Path


def atomic_write(path: str | Path, data: bytes | str, *, mode: int = 0o600) -> Path:
    """Replace ``path`` with ``data`` atomically and durably (file mode ``mode``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(blob)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new file in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
