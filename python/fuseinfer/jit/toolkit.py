"""Find what a kernel build needs: a CUDA build of torch, nvcc, ninja, CUTLASS headers.

Each check raises ToolkitError with one sentence on what is missing and how to get it.
Nothing here runs at import time.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


class ToolkitError(RuntimeError):
    """The machine cannot build fuseinfer's CUDA kernels."""


@dataclass(frozen=True)
class CudaToolkit:
    home: Path
    nvcc: Path
    version: tuple[int, int]

    @property
    def version_str(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


def torch_cuda_version() -> tuple[int, int]:
    """CUDA version torch was built with; ToolkitError for CPU-only or ROCm builds."""
    import torch

    if torch.version.hip is not None:
        raise ToolkitError(
            f"fuseinfer's kernels are CUDA-only; this torch ({torch.__version__}) is a ROCm "
            "build. The CPU reference ops still work."
        )
    if torch.version.cuda is None:
        raise ToolkitError(
            f"this torch ({torch.__version__}) has no CUDA support; install a CUDA build of "
            "torch to run fuseinfer's GPU kernels (the CPU reference ops work without it)."
        )
    major, minor = torch.version.cuda.split(".")[:2]
    return int(major), int(minor)


def _nvcc_candidates() -> list[Path]:
    found: list[Path] = []
    if os.environ.get("FUSEINFER_NVCC"):
        return [Path(os.environ["FUSEINFER_NVCC"])]
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            found.append(Path(os.environ[var]) / "bin" / "nvcc")
    on_path = shutil.which("nvcc")
    if on_path:
        found.append(Path(on_path))
    found.append(Path("/usr/local/cuda/bin/nvcc"))
    return found


@functools.lru_cache(maxsize=8)
def _nvcc_version(nvcc: str) -> tuple[int, int]:
    try:
        text = subprocess.run(
            [nvcc, "--version"], capture_output=True, text=True, timeout=60, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise ToolkitError(f"could not run {nvcc} --version: {e}") from e
    match = re.search(r"release (\d+)\.(\d+)", text)
    if not match:
        raise ToolkitError(f"could not read the CUDA version from `{nvcc} --version`")
    return int(match.group(1)), int(match.group(2))


def find_toolkit() -> CudaToolkit:
    """The CUDA toolkit to build with, checked against torch's CUDA version."""
    want = torch_cuda_version()
    candidates = _nvcc_candidates()
    nvcc = next((c for c in candidates if c.is_file() and os.access(c, os.X_OK)), None)
    if nvcc is None:
        raise ToolkitError(
            f"nvcc not found (looked at {', '.join(str(c) for c in candidates)}). fuseinfer "
            f"builds its CUDA kernels on first use and needs the CUDA {want[0]}.x toolkit "
            "that matches torch: install it and set CUDA_HOME (or FUSEINFER_NVCC)."
        )
    version = _nvcc_version(str(nvcc))
    if version[0] != want[0]:
        raise ToolkitError(
            f"{nvcc} is CUDA {version[0]}.{version[1]} but torch was built with CUDA "
            f"{want[0]}.{want[1]}; install a CUDA {want[0]}.x toolkit and point CUDA_HOME "
            "(or FUSEINFER_NVCC) at it."
        )
    return CudaToolkit(home=nvcc.resolve().parent.parent, nvcc=nvcc, version=version)


def find_ninja() -> str:
    path = shutil.which("ninja")
    if path is None:
        try:
            import ninja  # the PyPI package ships the binary

            path = str(Path(ninja.BIN_DIR) / "ninja")
        except ImportError:
            path = None
    if path is None:
        raise ToolkitError("ninja not found; `pip install ninja` (fuseinfer builds with it).")
    return path


def cutlass_include_dirs() -> list[Path]:
    """Header folders of the nvidia-cutlass pip package (found without importing it)."""
    spec = importlib.util.find_spec("cutlass_library")
    if spec is None or not spec.submodule_search_locations:
        raise ToolkitError(
            "CUTLASS headers not found; `pip install --no-deps nvidia-cutlass` "
            "(fuseinfer uses its headers only)."
        )
    root = Path(next(iter(spec.submodule_search_locations))) / "source"
    dirs = [root / "include", root / "tools" / "util" / "include"]
    if not (dirs[0] / "cutlass" / "cutlass.h").is_file():
        raise ToolkitError(f"the nvidia-cutlass package at {root} has no cutlass/cutlass.h")
    return dirs


def cutlass_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-cutlass")
    except PackageNotFoundError:
        return "unknown"


def probe() -> dict[str, str]:
    """What `fuseinfer info` shows: each requirement found, or why not."""
    report: dict[str, str] = {}
    def nvcc() -> str:
        found = next((c for c in _nvcc_candidates() if c.is_file()), None)
        if found is None:
            raise ToolkitError("nvcc not found (set CUDA_HOME or FUSEINFER_NVCC)")
        version = "{}.{}".format(*_nvcc_version(str(found)))
        try:
            find_toolkit()
            verdict = "matches torch"
        except ToolkitError as e:
            verdict = f"not usable: {e}"
        return f"{found} (CUDA {version}; {verdict})"

    checks = {
        "torch CUDA": lambda: ".".join(map(str, torch_cuda_version())),
        "nvcc": nvcc,
        "ninja": find_ninja,
        "cutlass": lambda: f"{cutlass_version()} at {cutlass_include_dirs()[0]}",
    }
    for name, check in checks.items():
        try:
            report[name] = str(check())
        except ToolkitError as e:
            report[name] = f"MISSING: {e}"
    return report
