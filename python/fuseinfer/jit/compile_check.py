"""Compile every csrc module to object files without linking or running anything.

Catches C++/CUDA errors on a machine with nvcc but no GPU (CI) and fails on register
spills (-Xptxas -v). Prints one line per module (kernels, most registers and shared
memory, spills); -v adds one line per kernel. A module whose sources, flags, nvcc, torch
and CUTLASS are unchanged since it last passed is not compiled again (a stamp under
<cache dir>/compile_check/; --force ignores it). FUSEINFER_SKIP_COMPILE_CHECK=1 skips the
check. A CPU-only torch lacks one generated c10 CUDA header; a one-line stand-in is
supplied for this check only.

--quick compiles only the representative sources of a module that marks some
(`quick_check` in its module.json: the CUTLASS GEMM menu is large, CI compiles a sample).

    python -m fuseinfer.jit.compile_check [--arch 9.0a] [--module norm] [--quick] [-v] [--force]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from .compile_stamp import check_digest, read_stamp, stamp_path, write_stamp
from .module_spec import all_specs
from .ninja_build import BuildError, BuildPlan, run_ninja
from .ptxas_report import ModuleReport, parse_ptxas
from .toolkit import CudaToolkit, _nvcc_candidates, _nvcc_version

SKIP_VARIABLE = "FUSEINFER_SKIP_COMPILE_CHECK"
_GENERATED_HEADER = "c10/cuda/impl/cuda_cmake_macros.h"


def _toolkit_without_torch_cuda() -> CudaToolkit:
    """nvcc as found on the machine; no check against torch's CUDA (it may have none)."""
    for nvcc in _nvcc_candidates():
        if nvcc.is_file():
            return CudaToolkit(nvcc.resolve().parent.parent, nvcc, _nvcc_version(str(nvcc)))
    raise SystemExit("compile check: nvcc not found (set CUDA_HOME or FUSEINFER_NVCC)")


def nvcc_version_text(nvcc: Path) -> str:
    """The whole `nvcc --version` output (release and build), part of the stamp's key."""
    return subprocess.run([str(nvcc), "--version"], capture_output=True, text=True,
                          timeout=60, check=True).stdout


def _shim_dir(root: Path) -> Path | None:
    from torch.utils.cpp_extension import include_paths

    if any((Path(p) / _GENERATED_HEADER).is_file() for p in include_paths()):
        return None
    header = root / "shim" / _GENERATED_HEADER
    header.parent.mkdir(parents=True, exist_ok=True)
    header.write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    return root / "shim"


def _with_ptxas_report(plan: BuildPlan) -> BuildPlan:
    sources = tuple(replace(s, flags=s.flags + ("-Xptxas", "-v")) for s in plan.spec.sources)
    return replace(plan, spec=replace(plan.spec, sources=sources))


def _compile(plan: BuildPlan, folder: Path) -> ModuleReport:
    run_ninja(plan, folder, folder / f"{plan.spec.name}.so", compile_only=True, verbose=True,
              quiet=True)
    return parse_ptxas(plan.spec.name, (folder / "build.log").read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="9.0a")
    parser.add_argument("--module", action="append", help="only these modules")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="one line per kernel (registers, shared memory, spills)")
    parser.add_argument("--quick", action="store_true",
                        help="only the representative sources of modules that mark some")
    parser.add_argument("--force", action="store_true",
                        help="compile even the modules whose stamp is current")
    args = parser.parse_args(argv)
    if os.environ.get(SKIP_VARIABLE) == "1":
        print(f"compile check: skipped ({SKIP_VARIABLE}=1)")
        return 0
    toolkit = _toolkit_without_torch_cuda()
    nvcc_version = nvcc_version_text(toolkit.nvcc)
    specs = all_specs()
    names = args.module or sorted(specs)
    failed: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fuseinfer-compile-check-") as tmp:
        root = Path(tmp)
        shim = _shim_dir(root)
        for name in names:
            spec = specs[name].quick_subset() if args.quick else specs[name]
            if not any(src.path.suffix == ".cu" for src in spec.sources_for((args.arch,))):
                print(f"  {name}: nothing to compile for arch {args.arch}")
                continue
            plan = _with_ptxas_report(BuildPlan(
                spec=spec, toolkit=toolkit, archs=(args.arch,),
                extra_includes=(shim,) if shim else ()))
            digest = check_digest(plan, nvcc_version, shim is not None)
            stamp = stamp_path(name, args.arch)
            report = None if args.force else read_stamp(stamp, digest)
            compiled = report is None
            how = "unchanged since it passed"
            if compiled:
                start = time.perf_counter()
                try:
                    report = _compile(plan, root / name)
                except BuildError as err:
                    print(f"  {name}: FAILED\n{err}")
                    failed.append(name)
                    continue
                how = f"compiled in {time.perf_counter() - start:.0f} s"
            print(f"  {report.summary()} ({how})", flush=True)
            if args.verbose:
                for line in report.details():
                    print(f"    {line}")
            if report.spilling():
                print(f"  {name}: register spills in {', '.join(report.spilling())}")
                failed.append(name)
            elif compiled:
                write_stamp(stamp, digest, report)
    if failed:
        print(f"compile check FAILED: {', '.join(failed)} for arch {args.arch}")
        return 1
    print(f"compile check passed: {', '.join(names)} for arch {args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
