"""Which rank of how many a model runner is, and the process group it talks through.

Each rank builds its own model runner over its state: its shard of the weights, its KV
cache, its CUDA graphs. Rank 0 also runs the scheduler and hands every step's inputs to
the others. Today there is one rank (`SINGLE_RANK`, no process group).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ParallelState:
    rank: int = 0
    world_size: int = 1  # tensor-parallel ranks
    group: Any = None  # a torch.distributed ProcessGroup; None for a single rank
    # a CustomAllreduce over the group (GPUs of one node), None: torch.distributed alone
    allreduce: Any = None

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ValueError(f"ParallelState.world_size: must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"ParallelState.rank: must be in [0, {self.world_size}), got "
                             f"{self.rank}")
        if self.world_size > 1 and self.group is None:
            raise ValueError("ParallelState.group: several ranks need a process group")

    @property
    def is_single(self) -> bool:
        return self.world_size == 1

    @property
    def is_first(self) -> bool:
        """The rank that schedules and reports."""
        return self.rank == 0


SINGLE_RANK = ParallelState()
