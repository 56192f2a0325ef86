"""nvcc architecture flags for the present GPU (sm_90a on Hopper, sm_100a on Blackwell)."""

from __future__ import annotations

import os
import re

# Compute capabilities with an arch-specific ("a") target that unlocks wgmma, setmaxnreg
# and other instructions that plain sm_XY code cannot use.
_ARCH_SPECIFIC = {(9, 0), (10, 0), (10, 3), (12, 0)}


def arch_name(major: int, minor: int) -> str:
    """'9.0a' for Hopper, '8.0' for A100, ..."""
    suffix = "a" if (major, minor) in _ARCH_SPECIFIC else ""
    return f"{major}.{minor}{suffix}"


def gencode_flags(arch: str) -> list[str]:
    """nvcc flags for one arch name such as '9.0a' or '8.6'."""
    match = re.fullmatch(r"(\d+)\.(\d+)([af]?)", arch.strip())
    if not match:
        raise ValueError(f"bad CUDA arch '{arch}': expected e.g. 9.0a, 10.0a or 8.0")
    number = f"{match.group(1)}{match.group(2)}{match.group(3)}"
    return [f"-gencode=arch=compute_{number},code=sm_{number}"]


def device_arch(device: int | None = None) -> str:
    """Arch to build for: FUSEINFER_CUDA_ARCH if set, else the device's own."""
    override = os.environ.get("FUSEINFER_CUDA_ARCH")
    if override:
        return override.strip()
    import torch

    index = torch.cuda.current_device() if device is None else device
    major, minor = torch.cuda.get_device_capability(index)
    return arch_name(major, minor)
