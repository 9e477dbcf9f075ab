"""Files only the controller's user may read: keys, tokens, the SQLite database.

Created with mode 0600 from the first byte (``os.open`` with the mode, never a chmod after the
write, which leaves a window), in directories of mode 0700.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """``path`` created if missing and closed to other users."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    path.chmod(DIR_MODE)
    return path


def write_private(path: Path, data: bytes | str) -> Path:
    """Atomically replace ``path`` with ``data``, mode 0600 (fsync before the rename)."""
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


@contextmanager
def created_once(folder: Path) -> Iterator[None]:
    """Held while a file of ``folder`` is read or, when missing, made: several controller
    processes that share the data dir (docs/deploy.md) start at once, and each must end up with
    the same CA, signing key or token, never its own (an exclusive ``flock`` on
    ``<folder>/.create.lock``, released when the block ends or the process dies)."""
    fd = os.open(private_dir(folder) / ".create.lock", os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def touch_private(path: Path) -> Path:
    """Create ``path`` empty with mode 0600 if it does not exist; tighten it if it does."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, FILE_MODE)
    os.close(fd)
    path.chmod(FILE_MODE)
    return path


def read_secret(path: Path) -> str:
    """A token or password from a file (the first line, without surrounding whitespace)."""
    text = path.expanduser().read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"{path} is empty: it must hold the secret")
    return text.splitlines()[0].strip()
