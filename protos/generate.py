"""Generate the Python stubs for every .proto in this folder.

The one script that writes protos/*_pb2*.py; its output is checked in and CI runs it with
``--check`` to fail when the stubs are stale. Imports come out package-relative
(``from protos import fleet_pb2``) because protoc runs from the repository root.
"""

from __future__ import annotations

import argparse
import filecmp
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
