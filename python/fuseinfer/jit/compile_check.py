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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

from .compile_stamp import check_digest, read_stamp, stamp_path, write_stamp
from .module_spec import ModuleSpec, all_specs
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


@dataclass(frozen=True)
class _CheckContext:
    toolkit: CudaToolkit
    nvcc_version: str
    arch: str
    shim: Path | None
    root: Path
    force: bool
    verbose: bool


def _check_module(spec: ModuleSpec, ctx: _CheckContext) -> tuple[list[str], bool]:
    """Compile one module (unless its stamp is current): its report lines, and whether it
    passed."""
    name = spec.name
    if not any(src.path.suffix == ".cu" for src in spec.sources_for((ctx.arch,))):
        return [f"  {name}: nothing to compile for arch {ctx.arch}"], True
    plan = _with_ptxas_report(BuildPlan(spec=spec, toolkit=ctx.toolkit, archs=(ctx.arch,),
                                        extra_includes=(ctx.shim,) if ctx.shim else ()))
    digest = check_digest(plan, ctx.nvcc_version, ctx.shim is not None)
    stamp = stamp_path(name, ctx.arch)
    report = None if ctx.force else read_stamp(stamp, digest)
    compiled = report is None
    how = "unchanged since it passed"
    if compiled:
        start = time.perf_counter()
        try:
            report = _compile(plan, ctx.root / name)
        except BuildError as err:
            return [f"  {name}: FAILED\n{err}"], False
        how = f"compiled in {time.perf_counter() - start:.0f} s"
    lines = [f"  {report.summary()} ({how})"]
    if ctx.verbose:
        lines += [f"    {line}" for line in report.details()]
    if report.spilling():
        lines.append(f"  {name}: register spills in {', '.join(report.spilling())}")
        return lines, False
    if compiled:
        write_stamp(stamp, digest, report)
    return lines, True


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
        context = _CheckContext(toolkit, nvcc_version, args.arch, shim, root, args.force,
                                args.verbose)
        specs_to_check = [specs[n].quick_subset() if args.quick else specs[n] for n in names]
        # Modules compile side by side: most are one translation unit, which alone would
        # leave all but one core idle.
        workers = max(1, min(len(names), os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = [pool.submit(_check_module, spec, context) for spec in specs_to_check]
            for name, result in zip(names, results, strict=True):
                lines, ok = result.result()
                print("\n".join(lines), flush=True)
                if not ok:
                    failed.append(name)
    if failed:
        print(f"compile check FAILED: {', '.join(failed)} for arch {args.arch}")
        return 1
    print(f"compile check passed: {', '.join(names)} for arch {args.arch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
