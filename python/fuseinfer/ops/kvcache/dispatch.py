"""Dispatch-table entry of store_kv_cache: it copies 16-byte vectors, one per thread,
threads_per_block each. Rules are tried in order; the first whose max_tokens holds is used.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import register_op
from ...dispatch.rule_checks import check_bound, check_last, check_threads
from ..library import table_bound


@dataclass(frozen=True)
class KvCacheLaunchRule:
    max_tokens: int | None
    threads_per_block: int

    def validate(self, where: str) -> None:
        check_threads(self.threads_per_block, where)
        check_bound(self.max_tokens, where)


@dataclass(frozen=True)
class KvCacheDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[KvCacheLaunchRule, ...]

    def validate(self, where: str) -> None:
        check_last(self.rules, where)


KVCACHE_BUILTIN = KvCacheDispatch(
    source="built-in default",
    enable_pdl=True,
    rules=(KvCacheLaunchRule(64, 128), KvCacheLaunchRule(None, 256)),
)

register_op("kvcache", KvCacheDispatch, KVCACHE_BUILTIN)


def push_kvcache(device: int, table: KvCacheDispatch) -> None:
    import torch

    torch.ops.fuseinfer._kvcache_configure(
        device, [table_bound(r.max_tokens) for r in table.rules],
        [r.threads_per_block for r in table.rules], table.enable_pdl)
