"""Load a csrc module into the process: a matching prebuilt (AOT) library if there is one,
else a cached JIT build, else build it now. Loading registers its CUDA kernels with torch."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from ..paths import prebuilt_dir
from .arch import device_arch
from .cache import BuildKey, build_once
from .module_spec import ModuleSpec, get_spec
from .ninja_build import BuildPlan, run_ninja
from .toolkit import CudaToolkit, cutlass_version, find_toolkit, torch_cuda_version


@dataclass(frozen=True)
class LoadedModule:
    name: str
    path: Path
    origin: str  # "prebuilt", "cache" or "built"


_LOADED: dict[str, LoadedModule] = {}
_LOCK = threading.Lock()


def build_key(plan: BuildPlan) -> BuildKey:
    import torch

    return BuildKey(
        module=plan.spec.name,
        sources_digest=plan.spec.sources_digest(),
        flags=tuple(plan.common_flags()),
        torch_version=torch.__version__,
        cuda_version=plan.toolkit.version_str,
        archs=plan.archs,
        cutlass_version=cutlass_version() if plan.spec.uses_cutlass else "",
    )


def prebuilt_metadata(spec: ModuleSpec, toolkit_cuda: str | None = None) -> dict:
    """What an AOT build records next to its library, and what the loader compares."""
    import torch

    cuda = torch.version.cuda or ""
    return {"module": spec.name, "torch": torch.__version__, "cuda": toolkit_cuda or cuda,
            "sources_digest": spec.sources_digest()}


def _matching_prebuilt(spec: ModuleSpec, arch: str) -> Path | None:
    library = prebuilt_dir() / f"{spec.name}.so"
    meta_file = prebuilt_dir() / f"{spec.name}.json"
    if not (library.is_file() and meta_file.is_file()):
        return None
    meta = json.loads(meta_file.read_text())
    want = prebuilt_metadata(spec)
    same_build = all(meta.get(k) == want[k] for k in ("module", "torch", "sources_digest"))
    same_cuda = str(meta.get("cuda", "")).split(".")[0] == want["cuda"].split(".")[0]
    return library if same_build and same_cuda and arch in meta.get("archs", []) else None


def build(spec: ModuleSpec, toolkit: CudaToolkit, archs: tuple[str, ...]) -> tuple[Path, bool]:
    """Build (or find in the cache) the library of `spec` for `archs`."""
    plan = BuildPlan(spec=spec, toolkit=toolkit, archs=archs)
    return build_once(build_key(plan), lambda folder, out: run_ninja(plan, folder, out))


def _mark_used(folder: Path) -> None:
    """A cached build's folder gets the time of its last load, so pruning a cache by age
    (microbench/device_run.sh keeps the newest folder per module) keeps the builds in use."""
    try:
        os.utime(folder)
    except OSError:  # a read-only cache still loads
        pass


def load(name: str) -> LoadedModule:
    """Make module `name` (csrc/<name>) loaded in this process; idempotent and thread-safe."""
    import torch

    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        torch_cuda_version()  # clear error for CPU-only or ROCm torch before anything else
        spec = get_spec(name)
        arch = device_arch()
        library = _matching_prebuilt(spec, arch)
        origin = "prebuilt"
        if library is None:
            library, built_now = build(spec, find_toolkit(), (arch,))
            origin = "built" if built_now else "cache"
            _mark_used(library.parent)
        torch.ops.load_library(str(library))
        module = LoadedModule(name, library, origin)
        _LOADED[name] = module
        return module


def loaded_modules() -> dict[str, LoadedModule]:
    return dict(_LOADED)
