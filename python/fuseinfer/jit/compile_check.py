"""Compile every csrc module to object files without linking or running anything.

Catches C++/CUDA errors on a machine with nvcc but no GPU (CI), and prints each kernel's
registers and spills (-Xptxas -v). A CPU-only torch lacks one generated c10 CUDA header;
a one-line stand-in is supplied for this check only.

    python -m fuseinfer.jit.compile_check [--arch 9.0a] [--module norm]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
from pathlib import Path

from .module_spec import all_specs
from .ninja_build import BuildPlan, run_ninja
from .toolkit import CudaToolkit, _nvcc_candidates, _nvcc_version

_GENERATED_HEADER = "c10/cuda/impl/cuda_cmake_macros.h"


def _toolkit_without_torch_cuda() -> CudaToolkit:
    """nvcc as found on the machine; no check against torch's CUDA (it may have none)."""
    for nvcc in _nvcc_candidates():
        if nvcc.is_file():
            return CudaToolkit(nvcc.resolve().parent.parent, nvcc, _nvcc_version(str(nvcc)))
    raise SystemExit("compile check: nvcc not found (set CUDA_HOME or FUSEINFER_NVCC)")


def _shim_dir(root: Path) -> Path | None:
    from torch.utils.cpp_extension import include_paths

    if any((Path(p) / _GENERATED_HEADER).is_file() for p in include_paths()):
        return None
    header = root / "shim" / _GENERATED_HEADER
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return root / "shim"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="9.0a")
    parser.add_argument("--module", action="append", help="only these modules")
    args = parser.parse_args(argv)
    toolkit = _toolkit_without_torch_cuda()
    specs = all_specs()
    names = args.module or sorted(specs)
    with tempfile.TemporaryDirectory(prefix="fuseinfer-compile-check-") as tmp:
        root = Path(tmp)
        shim = _shim_dir(root)
        for name in names:
            plan = BuildPlan(spec=specs[name], toolkit=toolkit, archs=(args.arch,),
                             extra_includes=(shim,) if shim else ())
            plan = _with_ptxas_report(plan)
            folder = root / name
            run_ninja(plan, folder, folder / f"{name}.so", compile_only=True, verbose=True)
            _print_resources((folder / "build.log").read_text())
    print(f"compile check passed: {', '.join(names)} for arch {args.arch}")
    return 0


def _with_ptxas_report(plan: BuildPlan) -> BuildPlan:
    from dataclasses import replace

    sources = tuple(replace(s, flags=s.flags + ("-Xptxas", "-v")) for s in plan.spec.sources)
    return replace(plan, spec=replace(plan.spec, sources=sources))


def _print_resources(log: str) -> None:
    """One line per kernel: registers, spills, shared memory; fails on spills."""
    kernel = None
    spills = []
    for line in log.splitlines():
        if m := re.search(r"Compiling entry function '(\w+)'", line):
            kernel = m.group(1)
        elif m := re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if int(m.group(1)) or int(m.group(2)):
                spills.append(kernel)
        elif m := re.search(r"Used (\d+) registers(?:.*?(\d+) bytes smem)?", line):
            print(f"  {m.group(1):>3} regs {m.group(2) or 0:>6} B smem  {kernel}")
    if spills:
        raise SystemExit(f"register spills in: {', '.join(s or '?' for s in spills)}")


if __name__ == "__main__":
    sys.exit(main())
