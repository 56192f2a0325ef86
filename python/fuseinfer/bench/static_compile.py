"""torch.compile baselines with one static-shape graph per benchmarked shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

_compiled: dict[str, Callable[..., Any]] = {}


def _allow_many_recompiles() -> None:
    # Lift dynamo's recompile limits so a compiled baseline never falls back to eager
    # (which would flatter us) and never turns dynamic across shapes.
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 100_000)


def compile_static(key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """torch.compile(fn, dynamic=False), made once per key."""
    if key not in _compiled:
        _allow_many_recompiles()
        _compiled[key] = torch.compile(fn, dynamic=False)
    return _compiled[key]
