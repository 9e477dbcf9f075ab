"""The trainer's one ``torch.load``: plain data only (``weights_only=True``), so no checkpoint,
pretrained weight file or backbone file runs code when it is read; every problem names the file."""

from __future__ import annotations

import logging
import pickle
import re
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

UNSAFE_FLAG = "model.allow_unsafe_pickle"


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used; the message names the file."""


class UnsafeCheckpointError(CheckpointError):
    """A file that would run code when loaded (a pickled object, not plain data)."""


def load_file(path: str | Path, *, what: str = "checkpoint", allow_unsafe_pickle: bool = False) -> Any:
    """``torch.load`` of ``path`` with ``weights_only=True``: tensors, dicts, lists, primitives.

    A file that needs more (a pickled module or any other object: loading it runs code from the
    file) is refused with :class:`UnsafeCheckpointError` unless ``allow_unsafe_pickle``, the
    spec's ``model.allow_unsafe_pickle: true``, says the user trusts it. A truncated or junk file
    gives :class:`CheckpointError`; both name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        needs = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if needs is None:  # the weights-only unpickler met bytes that are no pickle at all
            raise CheckpointError(
                f"{what} {path} is not a PyTorch checkpoint (junk or corrupt bytes)"
            ) from None
        if not allow_unsafe_pickle:
            raise UnsafeCheckpointError(
                f"{what} {path} refused: it is not plain data (it pickles {needs.group(1)}), and "
                f"loading it would run code from the file. If you made this file or trust it, set "
                f"{UNSAFE_FLAG}: true to load it anyway (this lets the file run any code)"
            ) from None
        log.warning("%s: true: loading %s with full pickle (it may run code)", UNSAFE_FLAG, path)
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # truncated zip, short read, ...
        raise CheckpointError(
            f"{what} {path} is not a readable PyTorch checkpoint (truncated or corrupt?): "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
