"""Dispatch-table entries of the RoPE and KV-cache families.

rope: a block covers tokens_per_block tokens x heads_per_block heads (0: all heads of its
tokens). All heads per block ("token-parallel") reads each token's position and cos/sin
once per block; a few heads per block ("head-parallel") gives small batches more blocks.
kvcache: store_kv_cache copies 16-byte vectors, one per thread, threads_per_block each.
Rules are tried in order; the first whose max_tokens holds is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..dispatch import TableError, register_op
from .library import table_bound


def _check_threads(threads: int, where: str) -> None:
    if not (32 <= threads <= 1024 and threads % 32 == 0):
        raise TableError(f"{where}.threads_per_block: must be a multiple of 32 in [32, 1024], "
                         f"got {threads}")


def _check_bound(max_tokens: int | None, where: str) -> None:
    if max_tokens is not None and max_tokens < 1:
        raise TableError(f"{where}.max_tokens: must be >= 1 or null, got {max_tokens}")


def _check_last(rules: tuple, where: str) -> None:
    if not rules:
        raise TableError(f"{where}.rules: needs at least one rule")
    if rules[-1].max_tokens is not None:
        raise TableError(f"{where}.rules: the last rule must have max_tokens null")


@dataclass(frozen=True)
class RopeLaunchRule:
    max_tokens: int | None
    tokens_per_block: int
    heads_per_block: int  # 0: every head of the block's tokens
    threads_per_block: int

    def validate(self, where: str) -> None:
        _check_threads(self.threads_per_block, where)
        _check_bound(self.max_tokens, where)
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
        _check_last(self.rules, where)


@dataclass(frozen=True)
class KvCacheLaunchRule:
    max_tokens: int | None
    threads_per_block: int

    def validate(self, where: str) -> None:
        _check_threads(self.threads_per_block, where)
        _check_bound(self.max_tokens, where)


@dataclass(frozen=True)
class KvCacheDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[KvCacheLaunchRule, ...]

    def validate(self, where: str) -> None:
        _check_last(self.rules, where)


ROPE_BUILTIN = RopeDispatch(
    source="built-in default",
    enable_pdl=True,
    rules=(
        RopeLaunchRule(64, 1, 4, 128),      # decode: several blocks per token
        RopeLaunchRule(None, 1, 0, 256),    # prefill: one block per token, all heads
    ),
)
KVCACHE_BUILTIN = KvCacheDispatch(
    source="built-in default",
    enable_pdl=True,
    rules=(KvCacheLaunchRule(64, 128), KvCacheLaunchRule(None, 256)),
)

register_op("rope", RopeDispatch, ROPE_BUILTIN)
register_op("kvcache", KvCacheDispatch, KVCACHE_BUILTIN)


def push_rope(device: int, table: RopeDispatch) -> None:
    import torch

    torch.ops.fuseinfer._rope_configure(
        device, [table_bound(r.max_tokens) for r in table.rules],
        [r.tokens_per_block for r in table.rules], [r.heads_per_block for r in table.rules],
        [r.threads_per_block for r in table.rules], table.enable_pdl)


def push_kvcache(device: int, table: KvCacheDispatch) -> None:
    import torch

    torch.ops.fuseinfer._kvcache_configure(
        device, [table_bound(r.max_tokens) for r in table.rules],
        [r.threads_per_block for r in table.rules], table.enable_pdl)
