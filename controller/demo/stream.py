"""The demo's video part: the synthetic conveyor clip the stream scenario plays on each class's
canary, and a few frames of it annotated by a real agent process running a chosen model.

The frames come from ``edgeloop agent stream`` (the agent's own pipeline and ``annotate.py``),
run once on the clip with the chosen model's ONNX and its mp4 sink; the controller only picks
frames out of the annotated mp4. A classification model draws its label per frame, a detection
model its boxes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def make_clip(out_dir: Path, seconds: float, fps: float, size: tuple[int, int]) -> tuple[Path, Path]:
    """The conveyor clip (reused when the same settings made it) and a shard tar holding it."""
    from trainer.jobs import synthesize_clip

    out_dir.mkdir(parents=True, exist_ok=True)
    clip, stamp, tar = out_dir / "conveyor.mp4", out_dir / "conveyor.json", out_dir / "conveyor-clip.tar"
    wanted = {"seconds": seconds, "fps": fps, "size": list(size), "seed": 0}
    if not (clip.is_file() and stamp.is_file() and json.loads(stamp.read_text(encoding="utf-8")) == wanted):
        synthesize_clip(clip, seconds, fps, size, seed=0)
        stamp.write_text(json.dumps(wanted), encoding="utf-8")
    with tarfile.open(tar, "w") as t:
        t.add(clip, arcname=f"clip/{clip.name}")
    return clip, tar


def artifact_dir_of(models_dir: Path, version: str) -> Path | None:
    """The trainer's artifact folder (model.onnx + manifest.json) of a model version."""
    for manifest in sorted(models_dir.rglob("manifest.json")):
        try:
            if json.loads(manifest.read_text(encoding="utf-8")).get("version") == version:
                if (manifest.parent / "model.onnx").is_file():
                    return manifest.parent
        except (OSError, ValueError):
            continue
    return None


def annotated_frames(
    artifact_dir: Path, clip: Path, out_dir: Path, count: int = 3, timeout_s: float = 120.0
) -> list[Path]:
    """Run the clip through ``edgeloop agent stream`` with the model's mp4 sink, keep the mp4
    in ``out_dir`` and ``count`` frames spread over it as JPEGs; returns the JPEGs."""
    import av

    out_dir.mkdir(parents=True, exist_ok=True)
    mp4 = out_dir / "annotated.mp4"
    work = out_dir.parent / ".stream-agent"
    cmd = [sys.executable, "-m", "edgeloop.cli", "agent", "stream", "-e", str(ROOT / "agent/specs/pipeline.yaml"),
           "--agent-dir", str(work), "--threads", "1", f"sources.0.uri={clip}",
           f"model.path={artifact_dir / 'model.onnx'}", f"sinks.mp4.path={mp4}"]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
    if run.returncode != 0 or not mp4.is_file():
        raise RuntimeError(f"agent stream failed ({run.returncode}): {run.stderr.strip()[-600:]}")
    with av.open(str(mp4)) as container:
        images = [f.to_image() for f in container.decode(video=0)]
    if not images:
        raise RuntimeError(f"agent stream wrote no frames to {mp4}")
    picks = sorted({round(i * (len(images) - 1) / max(1, count - 1)) for i in range(count)})
    frames = []
    for n, i in enumerate(picks):
        path = out_dir / f"frame_{n}.jpg"
        images[i].save(path, format="JPEG", quality=85)
        frames.append(path)
    return frames
