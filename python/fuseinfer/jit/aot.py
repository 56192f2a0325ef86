"""Ahead-of-time build of every csrc module into a folder of prebuilt libraries.

Used by setup.py (FUSEINFER_AOT=1) and, for the metadata file, by CMakeLists.txt. The
loader takes a prebuilt library only when its metadata matches the running torch, CUDA
major version, sources and the device's arch.

    python -m fuseinfer.jit.aot build --out DIR [--archs "9.0a;10.0a"]
    python -m fuseinfer.jit.aot metadata --module norm --archs "9.0a" --out DIR --cuda 13.0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from .loader import prebuilt_metadata
from .module_spec import all_specs, get_spec
from .ninja_build import BuildPlan, run_ninja
from .toolkit import find_toolkit

DEFAULT_ARCHS = "9.0a;10.0a"


def parse_archs(text: str | None) -> tuple[str, ...]:
    text = text or os.environ.get("FUSEINFER_AOT_ARCHS") or DEFAULT_ARCHS
    return tuple(a.strip() for a in text.replace(",", ";").split(";") if a.strip())


def write_metadata(module: str, archs: tuple[str, ...], out: Path, cuda: str) -> Path:
    meta = prebuilt_metadata(get_spec(module), cuda) | {"archs": list(archs)}
    path = out / f"{module}.json"
    path.write_text(json.dumps(meta, indent=1) + "\n")
    return path


def build_all(out: Path, archs: tuple[str, ...], work: Path) -> list[Path]:
    """Build every module for `archs` into `out` (<name>.so + <name>.json)."""
    toolkit = find_toolkit()
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for name, spec in sorted(all_specs().items()):
        folder = work / name
        library = folder / f"{name}.so"
        run_ninja(BuildPlan(spec=spec, toolkit=toolkit, archs=archs), folder, library)
        shutil.copy2(library, out / f"{name}.so")
        write_metadata(name, archs, out, toolkit.version_str)
        built.append(out / f"{name}.so")
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="prebuild fuseinfer's CUDA modules")
    sub = parser.add_subparsers(dest="cmd", required=True)
    build = sub.add_parser("build")
    build.add_argument("--out", type=Path, required=True)
    build.add_argument("--archs")
    build.add_argument("--work", type=Path, default=Path("build") / "aot")
    meta = sub.add_parser("metadata")
    meta.add_argument("--module", required=True)
    meta.add_argument("--archs", required=True)
    meta.add_argument("--out", type=Path, required=True)
    meta.add_argument("--cuda", required=True, help="CUDA version of the compiler used")
    args = parser.parse_args(argv)
    if args.cmd == "build":
        for path in build_all(args.out, parse_archs(args.archs), args.work):
            print(path)
    else:
        print(write_metadata(args.module, parse_archs(args.archs), args.out, args.cuda))
    return 0


if __name__ == "__main__":
    sys.exit(main())
