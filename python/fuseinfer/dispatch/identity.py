"""GPU identity and the dispatch-table key it maps to.

The key names a table in autotune_configs/: a known GPU model (h20, h100, h200, h800,
b200) or, failing that, its architecture family (sm90, sm100, sm80, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GIB = 1 << 30


@dataclass(frozen=True)
class GpuIdentity:
    name: str
    sm_count: int
    major: int
    minor: int
    memory_bytes: int

    @property
    def compute_capability(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def supports_pdl(self) -> bool:
        return self.major >= 9


def current_identity(device: int | None = None) -> GpuIdentity | None:
    """Identity of a CUDA device (the current one by default), or None with no GPU."""
    import torch

    if not torch.cuda.is_available() or torch.version.hip is not None:
        return None
    index = torch.cuda.current_device() if device is None else device
    props = torch.cuda.get_device_properties(index)
    return GpuIdentity(
        name=props.name,
        sm_count=props.multi_processor_count,
        major=props.major,
        minor=props.minor,
        memory_bytes=props.total_memory,
    )


def family_key(identity: GpuIdentity) -> str:
    """Architecture family: sm90 for every Hopper part, sm100 for Blackwell, sm80 for Ampere."""
    return f"sm{identity.major}0"


# Known models, matched on the device name as the driver reports it ("NVIDIA H100 80GB HBM3").
_MODEL_PATTERNS: tuple[tuple[str, str], ...] = (
    ("h20", r"\bH20\b"),
    ("h800", r"\bH800\b"),
    ("h200", r"\bG?H200\b"),
    ("h100", r"\bH100\b"),
    ("b200", r"\bB200\b"),
)


def gpu_key(identity: GpuIdentity) -> str:
    """The most specific table key for this GPU: its model if known, else its family."""
    name = identity.name.upper()
    for key, pattern in _MODEL_PATTERNS:
        if re.search(pattern, name):
            return key
    return family_key(identity)
