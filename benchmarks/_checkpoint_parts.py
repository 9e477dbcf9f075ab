"""Move trained checkpoints off a GPU machine whose file transfer is capped (16 MiB a file).

A checkpoint becomes zlib-compressed fp16 parts of at most 15 MiB (``<stem>.pth.part<i>``); joining
them gives back an fp32 checkpoint the trainer loads as usual. Optimizer and scheduler state is
dropped (nothing resumes from a moved checkpoint). Works for every checkpoint of ours: all are
plain data (a pruned model's ``structure`` travels in the first part, see
``trainer/models/checkpoint.py``), and parts are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import io
import zlib
from pathlib import Path

PART_BYTES = 15 * 1024 * 1024
_RESUME_ONLY = ("optimizer", "scheduler", "scaler")


def _load(source, torch):
    return torch.load(source, map_location="cpu", weights_only=True)


def split_checkpoint(path: Path, out_dir: Path, stem: str) -> list[Path]:
    """Write ``path`` as fp16 parts into ``out_dir``; returns the part files in order."""
    import torch

    payload = _load(path, torch)
    for k in _RESUME_ONLY:
        payload.pop(k, None)
    state = payload.pop("state_dict")
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in state.items()}
    parts, current, size = [], {}, 0
    for k, v in state.items():
        n = v.numel() * v.element_size()
        if current and size + n > PART_BYTES - (1 << 20):
            parts.append(current)
            current, size = {}, 0
        current[k] = v
        size += n
    parts.append(current)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for i, part in enumerate(parts):
        f = out_dir / f"{stem}.pth.part{i}"
        buf = io.BytesIO()
        torch.save({"meta": payload if i == 0 else None, "state_dict": part, "parts": len(parts)}, buf)
        f.write_bytes(zlib.compress(buf.getvalue(), 6))
        if f.stat().st_size > 16 * 1024 * 1024:
            raise ValueError(f"{f} is {f.stat().st_size} bytes, over the 16 MiB transfer limit")
        files.append(f)
    return files


def join_checkpoint(ckpt_dir: Path, stem: str, out: Path) -> Path:
    """Join ``<stem>.pth.part*`` from ``ckpt_dir`` into an fp32 checkpoint at ``out``."""
    import torch

    def part(i: int) -> dict:
        return _load(io.BytesIO(zlib.decompress((ckpt_dir / f"{stem}.pth.part{i}").read_bytes())), torch)

    first = part(0)
    payload, state = dict(first["meta"]), dict(first["state_dict"])
    for i in range(1, int(first["parts"])):
        state.update(part(i)["state_dict"])
    payload["state_dict"] = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, out)
    return out
