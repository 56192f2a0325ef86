"""Dispatch-table entry of the norm family: launch shapes by hidden size and token count."""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, current_identity, lookup, register_op
from ..library import table_bound

OP_FAMILY = "norm"


@dataclass(frozen=True)
class NormLaunchRule:
    """Rows with hidden <= max_hidden and at most max_tokens rows (null: no bound) launch
    blocks of rows_per_block rows, threads_per_row threads each."""

    max_hidden: int | None
    max_tokens: int | None
    threads_per_row: int
    rows_per_block: int

    def validate(self, where: str) -> None:
        tpr, rpb = self.threads_per_row, self.rows_per_block
        small_pow2 = 1 <= tpr < 32 and tpr & (tpr - 1) == 0
        if not (small_pow2 or (32 <= tpr <= 1024 and tpr % 32 == 0)):
            raise TableError(f"{where}.threads_per_row: must be a power of two below 32 or a "
                             f"multiple of 32 up to 1024, got {tpr}")
        if rpb < 1 or tpr * rpb > 1024:
            raise TableError(f"{where}.rows_per_block: {rpb} rows of {tpr} threads exceed "
                             "1024 threads per block")
        for name in ("max_hidden", "max_tokens"):
            bound = getattr(self, name)
            if bound is not None and bound < 1:
                raise TableError(f"{where}.{name}: must be >= 1 or null, got {bound}")


def _check_rules(rules: tuple[NormLaunchRule, ...], where: str) -> None:
    if not rules:
        raise TableError(f"{where}: needs at least one rule")
    last = rules[-1]
    if last.max_hidden is not None or last.max_tokens is not None:
        raise TableError(f"{where}: the last rule must match everything "
                         "(max_hidden and max_tokens null)")


@dataclass(frozen=True)
class NormDispatch:
    """Launch rules of the plain RMSNorm ops (rmsnorm, gemma_rmsnorm) and of the fused
    residual-add ones, tuned apart: they move two and four rows of data per row. The CUDA
    module picks a rule (pick_shape in csrc/norm/norm_ops.cu: the first of the op's kind
    whose bounds hold) from the table that push_to_device hands it."""

    source: str
    enable_pdl: bool
    rmsnorm_rules: tuple[NormLaunchRule, ...]
    fused_add_rules: tuple[NormLaunchRule, ...]

    def validate(self, where: str) -> None:
        _check_rules(self.rmsnorm_rules, f"{where}.rmsnorm_rules")
        _check_rules(self.fused_add_rules, f"{where}.fused_add_rules")


def _rule(hidden: int | None, tokens: int | None, tpr: int, rpb: int) -> NormLaunchRule:
    return NormLaunchRule(hidden, tokens, tpr, rpb)


# Used when no table covers the GPU. From the first H100 tuning: up to 128 tokens, wide
# rows (one or two 16-byte vectors per thread) give the lowest latency; past that, any
# shape with a few vectors per thread streams at the bandwidth limit.
_DEFAULT_RULES = (
    _rule(1024, 128, 128, 2),
    _rule(4096, 128, 256, 1),
    _rule(8192, 128, 512, 1),
    _rule(1024, None, 128, 2),
    _rule(None, None, 256, 1),
)
BUILTIN = NormDispatch(
    source="built-in default",
    enable_pdl=True,
    rmsnorm_rules=_DEFAULT_RULES,
    fused_add_rules=_DEFAULT_RULES,
)

register_op(OP_FAMILY, NormDispatch, BUILTIN)


def effective(device: int | None = None) -> NormDispatch:
    return lookup(OP_FAMILY, current_identity(device)).entry


def push_to_device(device: int, table: NormDispatch) -> None:
    """Hand a table to the loaded CUDA module (it keeps one per device)."""
    import torch

    tagged = [(0, r) for r in table.rmsnorm_rules] + [(1, r) for r in table.fused_add_rules]
    torch.ops.fuseinfer._norm_configure(
        device,
        [kind for kind, _ in tagged],
        [table_bound(r.max_hidden) for _, r in tagged],
        [table_bound(r.max_tokens) for _, r in tagged],
        [r.threads_per_row for _, r in tagged],
        [r.rows_per_block for _, r in tagged],
        table.enable_pdl,
    )
