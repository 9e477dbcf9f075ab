"""Generate the Python stubs for every .proto in this folder.

The one script that writes protos/*_pb2*.py; its output is checked in and CI runs it with
``--check`` to fail when the stubs are stale. Imports come out package-relative
(``from protos import fleet_pb2``) because protoc runs from the repository root.
"""

from __future__ import annotations

import argparse
import filecmp
import re
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def generate(out_root: Path) -> list[Path]:
    """Run protoc for every proto; returns the generated files (relative to out_root)."""
    import grpc_tools
    from grpc_tools import protoc  # dev dependency only

    include = Path(grpc_tools.__file__).parent / "_proto"
    protos = sorted(p.relative_to(ROOT) for p in HERE.glob("*.proto"))
    args = [
        "protoc",
        f"-I{ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *[str(p) for p in protos],
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    return sorted(p.relative_to(out_root) for p in (out_root / "protos").glob("*_pb2*.py*"))


def gencode_versions(root: Path) -> dict[str, tuple[int, ...]]:
    """The runtime versions the generated stubs demand: protobuf's ``ValidateProtobufRuntimeVersion``
    refuses an older runtime at import, and the grpc stubs refuse an older grpcio."""
    found: dict[str, tuple[int, ...]] = {}
    for path in sorted((root / "protos").glob("*_pb2.py")):
        m = re.search(r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*(\d+),\s*(\d+),\s*(\d+)",
                      path.read_text(encoding="utf-8"))  # fmt: skip
        if m:
            found["protobuf"] = max(found.get("protobuf", ()), tuple(int(g) for g in m.groups()))
    for path in sorted((root / "protos").glob("*_pb2_grpc.py")):
        m = re.search(r"GRPC_GENERATED_VERSION = '([\d.]+)'", path.read_text(encoding="utf-8"))
        if m:
            found["grpcio"] = max(found.get("grpcio", ()), tuple(int(g) for g in m.group(1).split(".")))
    return found


def declared_floors(pyproject: Path) -> dict[str, tuple[int, ...]]:
    """``name>=X.Y.Z`` floors from pyproject.toml's dependency strings."""
    floors: dict[str, tuple[int, ...]] = {}
    for name, version in re.findall(
        r'"([A-Za-z0-9_.-]+)(?:\[[^\]]*\])?>=([\d.]+)', pyproject.read_text(encoding="utf-8")
    ):
        floors[name.lower()] = tuple(int(g) for g in version.split("."))
    return floors


def floor_problems(gencode: dict[str, tuple[int, ...]], floors: dict[str, tuple[int, ...]]) -> list[str]:
    """A floor below what the stubs need lets pip install a runtime that fails at import."""
    problems = []
    for name, needed in sorted(gencode.items()):
        have = floors.get(name)
        text = ".".join(map(str, needed))
        if have is None:
            problems.append(f"pyproject.toml declares no floor for {name}; the stubs need {name}>={text}")
        elif have < needed:
            problems.append(
                f"pyproject.toml says {name}>={'.'.join(map(str, have))} but the generated stubs refuse "
                f"anything older than {text}: set the floor to {name}>={text}"
            )
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if checked-in stubs are stale")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / "protos").mkdir()
        files = generate(out)
        stale = [
            f for f in files if not (ROOT / f).exists() or not filecmp.cmp(out / f, ROOT / f, shallow=False)
        ]
        existing = {p.relative_to(ROOT) for p in HERE.glob("*_pb2*.py*")}
        extra = sorted(existing - set(files))
        if args.check:
            problems = floor_problems(gencode_versions(ROOT), declared_floors(ROOT / "pyproject.toml"))
            for problem in problems:
                print(problem, file=sys.stderr)
            if problems:
                return 1
            if stale or extra:
                print("stale generated protos:", *map(str, stale + extra), file=sys.stderr)
                print("run: python protos/generate.py", file=sys.stderr)
                return 1
            print(f"generated protos up to date ({len(files)} files)")
            return 0
        for f in extra:
            (ROOT / f).unlink()
        for f in files:
            shutil.copyfile(out / f, ROOT / f)
        print(f"wrote {len(files)} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
