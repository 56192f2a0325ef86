"""Where fuseinfer finds its kernel sources, dispatch tables and build cache.

A source checkout (or an editable install) reads csrc/ and autotune_configs/ from the
repository; a regular install reads the copies that setup.py places in the package.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parent.parent


def _first_existing(*candidates: Path) -> Path:
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    return candidates[0]


def csrc_dir() -> Path:
    """Root of the CUDA sources (one folder per op family)."""
    return _first_existing(_REPO_DIR / "csrc", _PACKAGE_DIR / "_data" / "csrc")


def tables_dir() -> Path:
    """Folder of per-GPU dispatch tables; FUSEINFER_TABLES_DIR overrides it."""
    override = os.environ.get("FUSEINFER_TABLES_DIR")
    if override:
        return Path(override)
    return _first_existing(
        _REPO_DIR / "autotune_configs", _PACKAGE_DIR / "_data" / "autotune_configs"
    )


def prebuilt_dir() -> Path:
    """Folder of ahead-of-time built modules (FUSEINFER_AOT=1 or CMake);
    FUSEINFER_PREBUILT_DIR overrides it."""
    override = os.environ.get("FUSEINFER_PREBUILT_DIR")
    return Path(override) if override else _PACKAGE_DIR / "_prebuilt"


def cache_dir() -> Path:
    """Root of the JIT build cache and cached measurements."""
    return Path(os.environ.get("FUSEINFER_CACHE_DIR", Path.home() / ".cache" / "fuseinfer"))


def repo_dir() -> Path | None:
    """The source checkout this package runs from, if any."""
    return _REPO_DIR if (_REPO_DIR / "csrc").is_dir() else None
