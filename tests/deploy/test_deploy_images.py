"""What each image's build stage copies is enough to build edgeloop, and holds only what it should.

No Docker engine here, so the build is reproduced where it matters: the files the Dockerfile
COPYs from the repository (and its Dockerfile.dockerignore lets through) go into an empty
directory, and the wheel is built from there with pip, as the Dockerfile's RUN does.
"""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from deploy_files import DEPLOY, EDGE_IMAGES, ROOT, parse_dockerfile

IMAGES = {
    "edge_images/cpu": {"edgeloop", "protos", "agent"},
    "edge_images/dgpu": {"edgeloop", "protos", "agent"},
    "edge_images/jetson": {"edgeloop", "protos", "agent"},
    "deploy/controller": {"edgeloop", "protos", "agent", "controller", "trainer"},
}


def _copied_sources(dockerfile: Path) -> list[str]:
    text = dockerfile.read_text(encoding="utf-8")
    sources = []
    for line in text.splitlines():
        m = re.match(r"^COPY (?!--from)(.+)$", line.strip())
        if m:
            *srcs, _dst = m.group(1).split()
            sources += srcs
    return sources


def _dockerignore_allows(dockerfile: Path, path: str) -> bool:
    ignore = Path(f"{dockerfile}.dockerignore")
    allowed = True
    for raw in ignore.read_text(encoding="utf-8").splitlines():
        rule = raw.strip()
        if not rule or rule.startswith("#"):
            continue
        negate = rule.startswith("!")
        pattern = rule.lstrip("!").rstrip("/")
        if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
            allowed = negate
    return allowed


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_build_context_makes_a_wheel_with_only_its_packages(image: str, tmp_path: Path) -> None:
    dockerfile = ROOT / image / "Dockerfile"
    context = tmp_path / "context"
    context.mkdir()
    for src in _copied_sources(dockerfile):
        if src.startswith("/"):
            continue
        assert (ROOT / src).exists(), f"{image}: COPY {src}: not in the repository"
        assert _dockerignore_allows(dockerfile, src), f"{image}: COPY {src} is excluded by its .dockerignore"
        target = context / src
        if (ROOT / src).is_dir():
            shutil.copytree(ROOT / src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(ROOT / src, target)
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            ".",
        ],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    (wheel,) = tmp_path.glob("edgeloop-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        metadata = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    packages = {n.split("/")[0] for n in names if "/" in n and not n.split("/")[0].endswith(".dist-info")}
    assert packages == IMAGES[image], f"{image}: the wheel holds {packages}"
    assert "Provides-Extra: agent" in metadata
    assert any(n.startswith("protos/") and n.endswith("_pb2.py") for n in names), "generated protos missing"


def test_the_images_in_the_table_are_all_the_images() -> None:
    found = {
        str(p.parent.relative_to(ROOT))
        for p in [*EDGE_IMAGES.glob("*/Dockerfile"), *DEPLOY.glob("*/Dockerfile")]
    }
    assert found == set(IMAGES)
    for image in IMAGES:
        assert parse_dockerfile(ROOT / image / "Dockerfile").healthcheck
