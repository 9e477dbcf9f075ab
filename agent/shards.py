"""Calibration and evaluation shards as the fleet delivers them: a verified ``.tar`` of images
(an ImageFolder, or a COCO split) that the device extracts once, safely, before using it."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ArtifactError


@dataclass
class Shards:
    """The shards a command names, downloaded (a .tar or a folder); None where it names none."""

    calibration: Path | None = None
    evaluation: Path | None = None
    stream_clip: Path | None = None  # the benchmark's stream scenario: a tar holding one video


VIDEO_SUFFIXES = (".mp4", ".mkv", ".mov", ".m4v", ".ts", ".webm", ".avi")


def video_in(folder: Path) -> Path:
    """The one video file of an extracted clip shard (the stream scenario's reference clip)."""
    videos = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise ArtifactError(
            f"stream clip shard {folder.name} holds no video file ({', '.join(VIDEO_SUFFIXES)})"
        )
    if len(videos) > 1:
        names = ", ".join(p.name for p in videos[:4])
        raise ArtifactError(
            f"stream clip shard {folder.name} holds {len(videos)} videos ({names}); one is needed"
        )
    return videos[0]


def extract_shard(path: Path | None, root: Path) -> Path | None:
    """A shard arrives as a .tar of images: extract it once under ``root`` (refusing absolute
    paths, links out of it and devices) and return the folder; a folder is returned as is."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        return path
    dest = root / path.stem
    if not (dest / ".complete").exists():
        dest.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(path) as tar:
                tar.extractall(dest, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise ArtifactError(f"shard {path.name} is not a readable tar: {exc}") from exc
        (dest / ".complete").touch()
    # a tar holding one top-level folder: use it
    children = [p for p in dest.iterdir() if not p.name.startswith(".")]
    return children[0] if len(children) == 1 and children[0].is_dir() and _has_subdirs(children[0]) else dest


def _has_subdirs(path: Path) -> bool:
    return any(p.is_dir() for p in path.iterdir())
