"""Compile and link one extension module with ninja (the same recipe for JIT and AOT)."""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .arch import gencode_flags
from .module_spec import ModuleSpec
from .toolkit import CudaToolkit, cutlass_include_dirs, find_ninja

# __CUDA_NO_*: keep torch's half/bfloat16 operator overloads out of device code, as
# torch's own extensions do, so intrinsics are used explicitly.
_NVCC_FLAGS = [
    "-std=c++20",
    "-O3",
    "-DNDEBUG",
    "-lineinfo",
    "--expt-relaxed-constexpr",
    "-Xcompiler=-fPIC",
    "-D__CUDA_NO_HALF_OPERATORS__",
    "-D__CUDA_NO_HALF_CONVERSIONS__",
    "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]
_CXX_FLAGS = ["-std=c++20", "-O3", "-DNDEBUG", "-fPIC"]
_LIBS = ["-lc10", "-lc10_cuda", "-ltorch", "-ltorch_cpu", "-ltorch_cuda", "-lcudart"]


class BuildError(RuntimeError):
    """Compiling or linking a module failed; the message ends with the compiler output."""


@dataclass(frozen=True)
class BuildPlan:
    spec: ModuleSpec
    toolkit: CudaToolkit
    archs: tuple[str, ...]
    extra_includes: tuple[Path, ...] = ()

    def common_flags(self) -> list[str]:
        """Flags that go into the cache key (per-file flags enter via the sources digest)."""
        return self.base_flags() + [f for arch in self.archs for f in gencode_flags(arch)]

    def base_flags(self) -> list[str]:
        """nvcc flags of every file; each file adds the gencode of its own archs."""
        import torch

        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        return list(_NVCC_FLAGS) + [f"-D_GLIBCXX_USE_CXX11_ABI={abi}"]

    def include_flags(self) -> list[str]:
        from torch.utils.cpp_extension import include_paths

        dirs = list(self.spec.include_dirs) + list(self.extra_includes)
        if self.spec.uses_cutlass:
            dirs += cutlass_include_dirs()
        dirs += [Path(p) for p in include_paths()] + [self.toolkit.home / "include"]
        return [f"-I{d}" for d in dirs]

    def link_flags(self) -> list[str]:
        import torch

        torch_lib = Path(torch.__file__).parent / "lib"
        cuda_libs = [self.toolkit.home / "lib64", self.toolkit.home / "lib"]
        flags = [f"-L{torch_lib}", f"-Wl,-rpath,{torch_lib}"]
        flags += [f"-L{d}" for d in cuda_libs if d.is_dir()]
        return flags + _LIBS


def _esc(path: Path | str) -> str:
    return str(path).replace("$", "$$").replace(" ", "$ ").replace(":", "$:")


def object_name(source: Path) -> str:
    return f"{source.parent.name}_{source.name}.o"


def write_ninja(plan: BuildPlan, folder: Path, output: Path, compile_only: bool = False) -> Path:
    """Write folder/build.ninja that compiles every source and links `output`."""
    includes = " ".join(plan.include_flags())
    lines = [
        "ninja_required_version = 1.3",
        f"nvcc = {plan.toolkit.nvcc}",
        "cxx = c++",
        f"nvcc_flags = {' '.join(plan.base_flags())} {includes}",
        f"cxx_flags = {' '.join(_CXX_FLAGS)} {includes}",
        f"ldflags = {' '.join(plan.link_flags())}",
        "",
        "rule nvcc",
        "  command = $nvcc $nvcc_flags $file_flags -MD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = nvcc $in",
        "rule cxx",
        "  command = $cxx $cxx_flags $file_flags -MMD -MF $out.d -c $in -o $out",
        "  depfile = $out.d",
        "  deps = gcc",
        "  description = c++ $in",
        "rule link",
        "  command = $cxx -shared $in -o $out $ldflags",
        "  description = link $out",
        "",
    ]
    objects = []
    for source in plan.spec.sources_for(plan.archs):
        obj = object_name(source.path)
        objects.append(obj)
        cuda = source.path.suffix == ".cu"
        lines.append(f"build {obj}: {'nvcc' if cuda else 'cxx'} {_esc(source.path)}")
        # per-file flags: only this file sees them; CUDA files get the gencode of their archs
        flags = [f for a in source.build_archs(plan.archs) for f in gencode_flags(a)] \
            if cuda else []
        flags += source.flags
        if flags:
            lines.append(f"  file_flags = {' '.join(flags)}")
    if compile_only:
        lines.append(f"default {' '.join(objects)}")
    else:
        lines.append(f"build {_esc(output.name)}: link {' '.join(objects)}")
        lines.append(f"default {_esc(output.name)}")
    path = folder / "build.ninja"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_ninja(plan: BuildPlan, folder: Path, output: Path, compile_only: bool = False,
              verbose: bool = False, quiet: bool = False) -> float:
    """Build in `folder`; returns seconds taken. Raises BuildError with the compiler's output.
    `quiet`: no progress lines on stderr (the caller reports)."""
    folder.mkdir(parents=True, exist_ok=True)
    write_ninja(plan, folder, output, compile_only)
    what = "compiling" if compile_only else "building"
    archs = "/".join("sm_" + a.replace(".", "") for a in plan.archs)
    if not quiet:
        print(f"fuseinfer: {what} CUDA module '{plan.spec.name}' for {archs} "
              f"in {folder} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    cmd = [find_ninja(), "-C", str(folder)] + (["-v"] if verbose else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log = folder / "build.log"
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-60:])
        raise BuildError(f"building CUDA module '{plan.spec.name}' failed (log: {log}):\n{tail}")
    seconds = time.perf_counter() - start
    if not quiet:
        print(f"fuseinfer: {what} '{plan.spec.name}' done in {seconds:.1f} s",
              file=sys.stderr, flush=True)
    return seconds
