"""Dispatch-table entry `linear`: which kernel small_batch_linear runs for a plain matmul of
M rows (no prologue), and its tile.

Rules are tried in order by M; the last has max_m null (any M up to MAX_M). A rule's
kernel is "gemv" (triton/small_batch_linear.py: whole-K tiles of rows walked by a grid of
min_programs programs of num_warps warps, num_stages deep; K up to 16384, M up to 8;
its block fields are unused), "split_k" (triton/small_m_matmul.py: BLOCK_N x BLOCK_K weight tiles
over the tensor cores, K split until the grid has at least `min_programs` programs, each
slice at least `min_k_steps` k steps, the slices summed by the last program of each N
tile) or "cublas" (torch.mm; the tile fields are then unused), so a runtime that routes
small steps through small_batch_linear gets cuBLAS where it wins. block_m is M rounded up
to a power of two (at least 16), not a table field. A rule naming gemv that a call cannot
take (K > 16384 or M > 8) runs split_k with its tile. `fuseinfer bench gemm` times both
kernels and cuBLAS per (M, N, K) of the bundled models; `fuseinfer tune gemm` writes the
rules (the built-in below is a starting point, not measured). Shape rules (n and k set)
hold for a weight of that shape only, come first, and each shape's max_m bounds increase
from the first bucket, so a shape tuned to another kernel at some M keeps its own ladder
up to there and the general rules past it.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, current_identity, lookup, register_op
from ...dispatch.rule_checks import check_pow2

OP_FAMILY = "linear"
KERNELS = ("gemv", "split_k", "cublas")


@dataclass(frozen=True)
class LinearRule:
    max_m: int | None  # null: any M
    kernel: str
    block_n: int
    block_k: int
    min_programs: int
    min_k_steps: int
    num_warps: int
    num_stages: int
    # a shape rule: only calls whose weight is [n, k] (both given); None: any shape
    n: int | None = None
    k: int | None = None

    @property
    def shaped(self) -> bool:
        return self.n is not None

    def matches(self, m: int, n: int | None, k: int | None) -> bool:
        return (self.max_m is None or m <= self.max_m) and \
            (self.n is None or (self.n == n and self.k == k))

    def validate(self, where: str) -> None:
        if (self.n is None) != (self.k is None) or \
                (self.n is not None and (self.n < 1 or self.k < 1)):  # type: ignore[operator]
            raise TableError(f"{where}: n and k name a shape together (both >= 1) or are "
                             f"both null, got n={self.n}, k={self.k}")
        if self.max_m is not None and self.max_m < 1:
            raise TableError(f"{where}.max_m: must be >= 1 or null, got {self.max_m}")
        if self.kernel not in KERNELS:
            raise TableError(f"{where}.kernel: must be one of {list(KERNELS)}, got "
                             f"{self.kernel!r}")
        check_pow2(self.block_n, 16, 256, f"{where}.block_n")
        check_pow2(self.block_k, 16, 512, f"{where}.block_k")
        check_pow2(self.num_warps, 1, 16, f"{where}.num_warps")
        if not 1 <= self.num_stages <= 8:
            raise TableError(f"{where}.num_stages: must be in [1, 8], got {self.num_stages}")
        if not 1 <= self.min_programs <= 1 << 14:  # keeps split_k's offsets in 32 bits
            raise TableError(f"{where}.min_programs: must be in [1, 16384], got "
                             f"{self.min_programs}")
        if not 1 <= self.min_k_steps <= 1024:
            raise TableError(f"{where}.min_k_steps: must be in [1, 1024], got "
                             f"{self.min_k_steps}")

    def split_k(self, n: int, k: int) -> tuple[int, int]:
        """(slices of K, K per slice, a multiple of block_k): enough slices for min_programs
        programs over ceil(N / block_n) tiles, each at least min_k_steps k steps, and no
        empty slice (the count is what the launch runs)."""
        tiles = -(-n // self.block_n)
        steps = -(-k // self.block_k)
        want = -(-self.min_programs // tiles)
        split = max(1, min(want, steps // self.min_k_steps))
        k_per_split = -(-steps // split) * self.block_k
        return -(-k // k_per_split), k_per_split


@dataclass(frozen=True)
class LinearDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[LinearRule, ...]
    # a 1-token down projection takes SiLU * up in the gemv's prologue up to this K (past
    # it, silu_and_mul's kernel first): every program makes the whole activation row, so
    # the prologue's cost grows with K (H200: it won at K 3072, lost at 12288 and 14336)
    gemv_silu_max_k: int = 8192

    def validate(self, where: str) -> None:
        if self.gemv_silu_max_k < 0:
            raise TableError(f"{where}.gemv_silu_max_k: must be >= 0, got "
                             f"{self.gemv_silu_max_k}")
        if not self.rules or self.rules[-1].max_m is not None or self.rules[-1].shaped:
            raise TableError(f"{where}.rules: needs rules, the last with max_m null and "
                             "no shape")
        for i, rule in enumerate(self.rules):
            rule.validate(f"{where}.rules[{i}]")
        first_general = next(i for i, r in enumerate(self.rules) if not r.shaped)
        if any(r.shaped for r in self.rules[first_general:]):
            raise TableError(f"{where}.rules: shape rules come before the general ones")
        groups: dict[tuple[int | None, int | None], list[int | None]] = {}
        for r in self.rules:
            groups.setdefault((r.n, r.k), []).append(r.max_m)
        for (n, _), bounds in groups.items():
            if None in bounds[:-1] or (n is None and bounds[-1] is not None) or \
                    [b for b in bounds if b is not None] != sorted(
                        {b for b in bounds if b is not None}):
                raise TableError(f"{where}.rules: max_m must increase within each shape "
                                 "and the general rules (a rule after a wider one would "
                                 "never be reached)")

    def rule(self, m: int, n: int | None = None, k: int | None = None) -> LinearRule:
        """The rule for M = m rows: a shape rule of the weight [n, k] first, then the
        general rules (n, k unknown: the general rules only)."""
        return next(r for r in self.rules if r.matches(m, n, k))


# Without a tuned entry: the gemv at one row (measured in the runtime, docs/ops.md) and
# cuBLAS past it, so an untuned GPU never runs an untimed split_k tile; `fuseinfer tune
# gemm` adds split_k where it wins (the H200: 2..16 rows).
BUILTIN = LinearDispatch(
    source="built-in default: the gemv at one row, cuBLAS past it (untuned)",
    enable_pdl=True,
    rules=(
        LinearRule(1, "gemv", 64, 128, 264, 4, 8, 4),
        LinearRule(None, "cublas", 64, 128, 264, 4, 4, 4),
    ),
)
register_op(OP_FAMILY, LinearDispatch, BUILTIN)


def effective(device: int | None = None) -> LinearDispatch:
    return lookup(OP_FAMILY, current_identity(device)).entry


__all__: list[str] = []
