"""JIT build cache on a real GPU: a second process reuses the build; concurrent first
builds in a fresh cache build once and both load a working module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

import fuseinfer

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "import torch, fuseinfer\n"
    "x = torch.randn(4, 4096, device='cuda', dtype=torch.bfloat16)\n"
    "w = torch.randn(4096, device='cuda', dtype=torch.bfloat16)\n"
    "y = fuseinfer.ops.rmsnorm(x, w)\n"
    "ref = fuseinfer.ops.norm.rmsnorm.reference_rmsnorm(x, w, 1e-6)\n"
    "assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2\n"
    "print('ORIGIN', fuseinfer.jit.loaded_modules()['norm'].origin)\n"
)


def _spawn(cache: Path) -> subprocess.Popen:
    env = dict(os.environ, FUSEINFER_CACHE_DIR=str(cache), PYTHONPATH=str(REPO / "python")
               + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-c", PROBE], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _origin(proc: subprocess.Popen) -> str:
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return next(line.split()[1] for line in output.splitlines() if line.startswith("ORIGIN"))


def test_second_process_reuses_cache():
    fuseinfer.ops.rmsnorm(torch.randn(2, 64, device="cuda"), torch.randn(64, device="cuda"))
    assert fuseinfer.jit.loaded_modules()["norm"].origin in ("built", "cache", "prebuilt")
    cache = Path(os.environ.get("FUSEINFER_CACHE_DIR", Path.home() / ".cache" / "fuseinfer"))
    assert _origin(_spawn(cache)) in ("cache", "prebuilt")


def test_concurrent_first_builds_build_once(tmp_path):
    procs = [_spawn(tmp_path), _spawn(tmp_path)]
    origins = sorted(_origin(p) for p in procs)
    assert origins == ["built", "cache"], origins
    libraries = list(tmp_path.glob("jit/norm/*/norm.so"))
    assert len(libraries) == 1 and not list(tmp_path.glob("jit/norm/*/*.partial"))
