"""Dispatch-table entry `moe`: the Triton block sizes of fused_moe's grouped GEMMs.

A rule's block_m is also the alignment block of moe_align_block_size (a tile of block_m
rows belongs to one expert); block_n x block_k is the weight tile, group_m the number of
M tiles that walk the N tiles together (L2 reuse of weight tiles). Rules are tried in order
by the token count T (not T * k: the routing spreads T * k rows over the experts, so T is
what bounds the rows per expert in decode); the last has max_tokens null. `rules` serve
the bf16/fp16/fp32 path, `fp8_rules` quant="fp8_block" (block_k divides 128 there, so a
k step lies in one scale group).

A GPU whose tables have no `moe` entry runs the built-in below, with one warning per process
that names the GPU key (the starting points are not tuned for any GPU).
"""

from __future__ import annotations

import threading
import warnings
from dataclasses import dataclass

from ...dispatch import TableError, register_op
from ...dispatch.rule_checks import check_bound

OP_FAMILY = "moe"


def _check_pow2(value: int, low: int, high: int, where: str) -> None:
    if value < low or value > high or value & (value - 1):
        raise TableError(f"{where}: must be a power of two in [{low}, {high}], got {value}")


@dataclass(frozen=True)
class MoeLaunchRule:
    max_tokens: int | None  # null: any T
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def validate(self, where: str) -> None:
        check_bound(self.max_tokens, where)
        _check_pow2(self.block_m, 16, 256, f"{where}.block_m")
        _check_pow2(self.block_n, 16, 256, f"{where}.block_n")
        _check_pow2(self.block_k, 16, 128, f"{where}.block_k")
        _check_pow2(self.num_warps, 1, 16, f"{where}.num_warps")
        if not 1 <= self.group_m <= 64:
            raise TableError(f"{where}.group_m: must be in [1, 64], got {self.group_m}")
        if not 1 <= self.num_stages <= 6:
            raise TableError(f"{where}.num_stages: must be in [1, 6], got {self.num_stages}")


def _check_rules(rules: tuple[MoeLaunchRule, ...], where: str) -> None:
    if not rules:
        raise TableError(f"{where}: needs at least one rule")
    if rules[-1].max_tokens is not None:
        raise TableError(f"{where}: the last rule must have max_tokens null")


@dataclass(frozen=True)
class MoeDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[MoeLaunchRule, ...]
    fp8_rules: tuple[MoeLaunchRule, ...]

    def validate(self, where: str) -> None:
        _check_rules(self.rules, f"{where}.rules")
        _check_rules(self.fp8_rules, f"{where}.fp8_rules")

    def rule(self, tokens: int, quant: str | None) -> MoeLaunchRule:
        rules = self.fp8_rules if quant else self.rules
        return next(r for r in rules if r.max_tokens is None or tokens <= r.max_tokens)


# Untuned starting points: small M tiles while few rows reach each expert (decode), larger
# tiles and grouped M walks once many do (prefill). `fuseinfer tune` is to refine them.
MOE_BUILTIN = MoeDispatch(
    source="built-in default (untuned starting points)",
    enable_pdl=True,
    rules=(
        MoeLaunchRule(32, 16, 64, 64, 1, 4, 3),
        MoeLaunchRule(256, 32, 64, 64, 4, 4, 3),
        MoeLaunchRule(None, 64, 128, 64, 8, 4, 3),
    ),
    fp8_rules=(
        MoeLaunchRule(32, 16, 128, 128, 1, 4, 3),
        MoeLaunchRule(None, 64, 128, 128, 8, 4, 3),
    ),
)
register_op(OP_FAMILY, MoeDispatch, MOE_BUILTIN)

_warned = False
_warn_lock = threading.Lock()


def effective(device: int | None = None) -> MoeDispatch:
    """The `moe` entry for a GPU: its model table, its family table, else the built-in
    (warning once per process, naming the key that has no entry)."""
    global _warned
    from ...dispatch import current_identity, gpu_key, lookup

    identity = current_identity(device)
    choice = lookup(OP_FAMILY, identity)
    if choice.table_key == "builtin" and identity is not None:
        with _warn_lock:
            first, _warned = not _warned, True
        if first:
            warnings.warn(f"fuseinfer.fused_moe: no '{OP_FAMILY}' entry in the dispatch "
                          f"tables for GPU key '{gpu_key(identity)}'; using the built-in "
                          "untuned block sizes", stacklevel=3)
    return choice.entry
