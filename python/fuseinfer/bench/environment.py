"""What a benchmark ran on: date, GPU, driver and software versions."""

from __future__ import annotations

import datetime as _dt
import importlib
import importlib.metadata
import platform
import subprocess
import sys


def _driver_version() -> str:
    """Driver version from nvidia-smi; "unknown" where it is missing or fails."""
    try:
        done = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = done.stdout.strip().splitlines()
    return lines[0].strip() if lines and lines[0].strip() else "unknown"


def _triton_version() -> str | None:
    # The distribution metadata answers without importing triton, which is slow.
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        pass
    try:
        import triton
    except Exception:
        return None
    return getattr(triton, "__version__", None)


def _flashinfer_version() -> str | None:
    """The FlashInfer a run compared against: the imported module's version, else the
    installed distribution's; None where there is none (its column stays '-')."""
    module = sys.modules.get("flashinfer")
    version = getattr(module, "__version__", None) if module is not None else None
    if version:
        return str(version)
    for distribution in ("flashinfer-python", "flashinfer"):
        try:
            return importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def _fuseinfer_version() -> str | None:
    try:
        module = importlib.import_module("fuseinfer")
    except Exception:
        return None
    return getattr(module, "__version__", None)


def source_commit() -> str | None:
    """The commit of the code being measured: $FUSEINFER_COMMIT, else the COMMIT file at
    the checkout's root (a `git archive` snapshot fills it in: export-subst), else
    `git rev-parse HEAD` with "-dirty" when the tree has changes; None outside a checkout."""
    import os
    import subprocess

    from ..paths import repo_dir

    if os.environ.get("FUSEINFER_COMMIT"):
        return os.environ["FUSEINFER_COMMIT"]
    root = repo_dir()
    if root is None:
        return None
    stamped = root / "COMMIT"
    if stamped.is_file():
        text = stamped.read_text().strip()
        if text and not text.startswith("$Format"):  # substituted by git archive
            return text
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"],
                              capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def utc_now() -> str:
    """UTC date-time in ISO form, to the second."""
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def collect_environment(device: int | None = None) -> dict[str, object]:
    """Describe the machine a run happens on; GPU fields are None without a GPU.

    `gpu_key` is left None: the caller fills it from the dispatch identity.
    """
    env: dict[str, object] = {
        "date": utc_now(),
        "gpu": None,
        "gpu_key": None,
        "sm_count": None,
        "compute_capability": None,
        "memory_gib": None,
        "driver": _driver_version(),
        "torch": None,
        "cuda": None,
        "triton": _triton_version(),
        "python": platform.python_version(),
        "fuseinfer": _fuseinfer_version(),
        "commit": source_commit(),
        "flashinfer": _flashinfer_version(),
    }
    try:
        import torch
    except ImportError:
        return env
    env["torch"] = torch.__version__
    env["cuda"] = torch.version.cuda
    if torch.cuda.is_available():
        index = torch.cuda.current_device() if device is None else device
        props = torch.cuda.get_device_properties(index)
        env["gpu"] = torch.cuda.get_device_name(index)
        env["sm_count"] = props.multi_processor_count
        env["compute_capability"] = f"{props.major}.{props.minor}"
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
    return env
