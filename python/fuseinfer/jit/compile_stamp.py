"""What the compile check remembers: one stamp per (module, arch) under
<cache dir>/compile_check/, holding the digest of everything the compile depended on and
the kernels' resources. A module whose digest matches its stamp passed before with the
same inputs, so the check prints the stored summary instead of compiling again."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from ..paths import cache_dir
from .ninja_build import BuildPlan
from .ptxas_report import ModuleReport

_FORMAT = 1  # bump when what a stamp means changes


_NVCC_ENV = ("NVCC_PREPEND_FLAGS", "NVCC_APPEND_FLAGS", "NVCC_CCBIN", "CUDAHOSTCXX", "CXX")


def _host_compiler() -> str:
    """`--version` of the host compiler nvcc calls (a compiler upgrade can break a build
    that nvcc itself still accepts); empty when none answers."""
    import shutil
    import subprocess

    compiler = os.environ.get("NVCC_CCBIN") or os.environ.get("CUDAHOSTCXX") \
        or shutil.which("c++") or shutil.which("g++") or ""
    if not compiler:
        return ""
    try:
        out = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return compiler
    return f"{compiler}: {out.stdout.strip()}"


def check_digest(plan: BuildPlan, nvcc_version: str, header_shim: bool) -> str:
    """SHA-256 over the module's sources and headers (with per-file flags), the common and
    include flags, the full `nvcc --version` text, torch's version, CUTLASS's version, the
    host compiler's `--version` and the NVCC_* variables nvcc reads.
    The header shim's folder is temporary, so only whether one is used enters the key."""
    import torch

    from .toolkit import cutlass_version

    fixed = replace(plan, extra_includes=())
    key = {
        "format": _FORMAT,
        "module": plan.spec.name,
        "sources": plan.spec.sources_digest(),
        "flags": fixed.common_flags(),
        "includes": fixed.include_flags(),
        "header_shim": header_shim,
        "nvcc": nvcc_version,
        "torch": torch.__version__,
        "cutlass": cutlass_version() if plan.spec.uses_cutlass else "",
        "host_compiler": _host_compiler(),
        # nvcc reads these on every call: a change is a different compile
        "nvcc_env": {k: os.environ.get(k) for k in _NVCC_ENV},
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def stamp_path(module: str, arch: str, root: Path | None = None) -> Path:
    root = cache_dir() if root is None else root
    return root / "compile_check" / f"{module}-sm{arch.replace('.', '')}.json"


def read_stamp(path: Path, digest: str) -> ModuleReport | None:
    """The report stored for `digest`, or None (no stamp, another digest, unreadable)."""
    try:
        data = json.loads(path.read_text())
        if data.get("digest") != digest:
            return None
        return ModuleReport.from_json(data["report"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def write_stamp(path: Path, digest: str, report: ModuleReport) -> None:
    """Atomically replace the stamp (concurrent checks never read half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.partial")
    partial.write_text(json.dumps({"digest": digest, "report": report.to_json()}, indent=1))
    os.replace(partial, path)
