"""Dispatch-table entry `allreduce`: which algorithm sums a message of a given size over a
given number of ranks, and whether the residual add + RMSNorm that follows runs fused.

`rules` are tried in order among those of the group's world size; the first whose
max_bytes bounds the message (bytes of one rank's tensor) gives the algorithm: "one_shot"
(every rank reads all peers; fewest steps, for small messages), "two_shot" (reduce-scatter
then all-gather; each rank moves 2/world of the data, for large ones) or "nccl"
(torch.distributed). A size past every rule, or a world size without rules, takes NCCL.
`fused_rules` likewise say whether fused_allreduce_add_rmsnorm runs the custom fused
kernel (its algorithm from `rules`) or the allreduce followed by fused_add_rmsnorm.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, register_op

OP_FAMILY = "allreduce"
ALGORITHMS = ("one_shot", "two_shot", "nccl")
WORLD_SIZES = (2, 4, 8)  # the world sizes csrc/allreduce has kernels for


def _check_bytes(max_bytes: int | None, where: str) -> None:
    if max_bytes is not None and max_bytes < 1:
        raise TableError(f"{where}.max_bytes: must be >= 1 or null, got {max_bytes}")


def _check_world(world_size: int, where: str) -> None:
    if world_size not in WORLD_SIZES:
        raise TableError(f"{where}.world_size: must be one of {list(WORLD_SIZES)}, got "
                         f"{world_size}")


@dataclass(frozen=True)
class AllreduceRule:
    world_size: int
    max_bytes: int | None  # null: any size
    algorithm: str

    def validate(self, where: str) -> None:
        _check_world(self.world_size, where)
        _check_bytes(self.max_bytes, where)
        if self.algorithm not in ALGORITHMS:
            raise TableError(f"{where}.algorithm: must be one of {list(ALGORITHMS)}, got "
                             f"{self.algorithm!r}")


@dataclass(frozen=True)
class FusedRule:
    world_size: int
    max_bytes: int | None  # null: any size
    fused: bool  # the custom fused kernel; False: allreduce, then fused_add_rmsnorm

    def validate(self, where: str) -> None:
        _check_world(self.world_size, where)
        _check_bytes(self.max_bytes, where)


def _first(rules: tuple, world_size: int, nbytes: int):  # type: ignore[no-untyped-def]
    return next((r for r in rules if r.world_size == world_size
                 and (r.max_bytes is None or nbytes <= r.max_bytes)), None)


@dataclass(frozen=True)
class AllreduceDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[AllreduceRule, ...]
    fused_rules: tuple[FusedRule, ...]

    def validate(self, where: str) -> None:
        for i, rule in enumerate(self.rules):
            rule.validate(f"{where}.rules[{i}]")
        for i, fused in enumerate(self.fused_rules):
            fused.validate(f"{where}.fused_rules[{i}]")

    def algorithm(self, world_size: int, nbytes: int) -> str:
        """The allreduce algorithm for one rank's message of `nbytes` over `world_size`."""
        rule = _first(self.rules, world_size, nbytes)
        return "nccl" if rule is None else rule.algorithm

    def fused(self, world_size: int, nbytes: int) -> bool:
        """Whether allreduce + add + RMSNorm of `nbytes` runs as the fused kernel."""
        rule = _first(self.fused_rules, world_size, nbytes)
        return rule is not None and rule.fused


_KIB, _MIB = 1024, 1024 * 1024
# Not measured for these kernels: the split follows the 2xH200 reference points of torch's
# symmetric-memory allreduce (one-shot ahead up to ~64 tokens at hidden 4096, two-shot
# ahead from 128 tokens, NCCL never ahead below 8192 tokens). `fuseinfer tune allreduce`
# on a multi-GPU machine replaces it.
ALLREDUCE_BUILTIN = AllreduceDispatch(
    source="built-in default (not measured: thresholds from torch symmetric-memory "
           "allreduce on 2xH200)",
    enable_pdl=True,
    rules=(
        AllreduceRule(2, 512 * _KIB, "one_shot"), AllreduceRule(2, 64 * _MIB, "two_shot"),
        AllreduceRule(4, 256 * _KIB, "one_shot"), AllreduceRule(4, 64 * _MIB, "two_shot"),
        AllreduceRule(8, 128 * _KIB, "one_shot"), AllreduceRule(8, 64 * _MIB, "two_shot"),
    ),
    fused_rules=tuple(FusedRule(w, 32 * _MIB, True) for w in WORLD_SIZES),
)
register_op(OP_FAMILY, AllreduceDispatch, ALLREDUCE_BUILTIN)


def effective(device: int | None = None) -> AllreduceDispatch:
    """The `allreduce` entry for a GPU (model table, family table, else the built-in)."""
    from ...dispatch import current_identity, lookup

    return lookup(OP_FAMILY, current_identity(device)).entry
