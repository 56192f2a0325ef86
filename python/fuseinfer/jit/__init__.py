"""Build and load of the csrc CUDA modules (JIT by default, AOT when prebuilt)."""

from __future__ import annotations

from .loader import LoadedModule, load, loaded_modules
from .ninja_build import BuildError
from .toolkit import ToolkitError

__all__ = ["BuildError", "LoadedModule", "ToolkitError", "load", "loaded_modules"]
