"""Dispatch-table entry of rope_with_cos_sin_cache.

rope: a block covers tokens_per_block tokens x heads_per_block heads (0: all heads of its
tokens). All heads per block ("token-parallel") reads each token's position and cos/sin
once per block; a few heads per block ("head-parallel") gives small batches more blocks.
Rules are tried in order; the first whose max_tokens holds is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, register_op
from ...dispatch.rule_checks import check_bound, check_last, check_threads
from ..library import table_bound


@dataclass(frozen=True)
class RopeLaunchRule:
    max_tokens: int | None
    tokens_per_block: int
    heads_per_block: int  # 0: every head of the block's tokens
    threads_per_block: int

    def validate(self, where: str) -> None:
        check_threads(self.threads_per_block, where)
        check_bound(self.max_tokens, where)
        if self.tokens_per_block < 1 or self.heads_per_block < 0:
            raise TableError(f"{where}: tokens_per_block must be >= 1 and heads_per_block "
                             ">= 0")
        if self.heads_per_block and self.tokens_per_block != 1:
            raise TableError(f"{where}: head-parallel rules (heads_per_block > 0) take one "
                             "token per block")


@dataclass(frozen=True)
class RopeDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[RopeLaunchRule, ...]

    def validate(self, where: str) -> None:
        check_last(self.rules, where)


ROPE_BUILTIN = RopeDispatch(
    source="built-in default",
    enable_pdl=True,
    rules=(
        RopeLaunchRule(64, 1, 4, 128),      # decode: several blocks per token
        RopeLaunchRule(None, 1, 0, 256),    # prefill: one block per token, all heads
    ),
)
register_op("rope", RopeDispatch, ROPE_BUILTIN)


def push_rope(device: int, table: RopeDispatch) -> None:
    import torch

    torch.ops.fuseinfer._rope_configure(
        device, [table_bound(r.max_tokens) for r in table.rules],
        [r.tokens_per_block for r in table.rules], [r.heads_per_block for r in table.rules],
        [r.threads_per_block for r in table.rules], table.enable_pdl)
