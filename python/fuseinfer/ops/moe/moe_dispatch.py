"""Dispatch-table entry `moe`: the Triton block sizes of fused_moe's grouped GEMMs, and for
quant="fp8_block" the backend (Triton or the CUTLASS grouped GEMM) and the CUTLASS
configuration per total-rows bucket.

A rule's block_m is also the alignment block of moe_align_block_size (a tile of block_m
rows belongs to one expert); block_n x block_k is the weight tile, group_m the number of
M tiles that walk the N tiles together (L2 reuse of weight tiles). Rules are tried in order
by the token count T (not T * k: the routing spreads T * k rows over the experts, so T is
what bounds the rows per expert in decode); the last has max_tokens null. `rules` serve
the bf16/fp16/fp32 path, `fp8_rules` quant="fp8_block" (block_k divides 128 there, so a
k step lies in one scale group), `mxfp4_rules` quant="mxfp4" (block_k a power of two in
[32, 256]: whole 32-element scale blocks per k step; the weight tile is dequantized in the
kernel, so a larger k step amortizes the decode). `mxfp4_source` says where the mxfp4 rules
come from: they are tuned separately (`fuseinfer tune moe --quant mxfp4`), and a table
written before them runs the built-in guesses below. Biases and clamped_swiglu take the
rules of their quant (the bias is one epilogue add, the activation its own kernel).

`fp8_backend` "cutlass" runs the FP8 experts through fp8_blockwise_grouped_mm (sm_90a; other
GPUs fall back to Triton) with the configuration of the first `fp8_grouped` rule whose
max_rows bounds R = T * k, the routed rows (the grouped GEMM's M summed over experts); a
rule whose config is "triton" keeps that bucket on the Triton kernels (the grouped path
costs more launches, which decode feels). fp8_backend "triton" ignores the rules. Both
fields may be left out (the defaults below).

A GPU whose tables have no `moe` entry runs the built-in below, with one warning per process
that names the GPU key (the starting points are not tuned for any GPU).
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

from ...dispatch import TableError, register_op
from ...dispatch.rule_checks import check_bound, check_pow2

OP_FAMILY = "moe"
# The CUTLASS grouped configurations csrc/moe builds, each for its arch only (sm90_: sm_90a,
# sm100_: sm_100a, compile-checked, not yet run): tile, cluster, schedule, and swap-AB (few
# rows per expert as the MMA's N).
GROUPED_CONFIGS = ("sm90_grouped_coop_128x128_c1x1", "sm90_grouped_ping_64x128_c1x2",
                   "sm90_grouped_swap_128x32_c1x1", "sm100_grouped_1sm_128x128_c1x1")
FP8_BACKENDS = ("triton", "cutlass")
TRITON = "triton"  # an fp8_grouped rule's config: this bucket stays on the Triton kernels


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
        check_pow2(self.block_k, 16, 128, f"{where}.block_k")
        self.validate_tiles(where)

    def validate_tiles(self, where: str) -> None:
        check_pow2(self.block_m, 16, 256, f"{where}.block_m")
        check_pow2(self.block_n, 16, 256, f"{where}.block_n")
        check_pow2(self.num_warps, 1, 16, f"{where}.num_warps")
        if not 1 <= self.group_m <= 64:
            raise TableError(f"{where}.group_m: must be in [1, 64], got {self.group_m}")
        if not 1 <= self.num_stages <= 6:
            raise TableError(f"{where}.num_stages: must be in [1, 6], got {self.num_stages}")


@dataclass(frozen=True)
class Mxfp4LaunchRule(MoeLaunchRule):
    """A quant="mxfp4" rule: block_k in [32, 256] (whole E8M0 scale blocks per k step).
    split_dot: the low and high nibbles' halves multiply the even and odd columns of A in
    two dots, instead of the decoded halves being interleaved into one B tile (a register
    shuffle of the B tile per k step; the split shuffles the smaller A tile instead)."""

    split_dot: bool = False

    def validate(self, where: str) -> None:
        check_bound(self.max_tokens, where)
        check_pow2(self.block_k, 32, 256, f"{where}.block_k")
        super().validate_tiles(where)


@dataclass(frozen=True)
class GroupedRule:
    max_rows: int | None  # null: any R
    config: str

    def validate(self, where: str) -> None:
        check_bound(self.max_rows, where)
        if self.config not in (*GROUPED_CONFIGS, TRITON):
            raise TableError(f"{where}.config: must be one of {[*GROUPED_CONFIGS, TRITON]}, "
                             f"got {self.config!r}")


def _config_for(rules: tuple[GroupedRule, ...], rows: int) -> str:
    """The configuration of the first rule whose max_rows bounds `rows`."""
    return next(r.config for r in rules if r.max_rows is None or rows <= r.max_rows)


SM100_DEFAULT_GROUPED = "sm100_grouped_1sm_128x128_c1x1"
# Swap-AB while few rows reach each expert, the 128 x 128 cooperative tile beyond (sm_90a).
DEFAULT_GROUPED = (GroupedRule(1024, "sm90_grouped_swap_128x32_c1x1"),
                   GroupedRule(None, "sm90_grouped_coop_128x128_c1x1"))


# Built-in guesses for H100/H200, not measured: few rows per expert (decode) want a small M
# tile, a long k step and a deep pipeline to keep weight loads in flight; many rows
# (prefill) a tall M tile, since each weight tile is decoded once per M tile and the decode
# is ALU work the tensor cores wait on.
MXFP4_BUILTIN_SOURCE = "built-in (H100/H200 guesses, not measured)"
MXFP4_BUILTIN_RULES = (
    Mxfp4LaunchRule(32, 16, 64, 128, 1, 4, 4),
    Mxfp4LaunchRule(256, 16, 128, 128, 1, 4, 3),
    Mxfp4LaunchRule(1024, 64, 128, 128, 8, 4, 3),
    Mxfp4LaunchRule(None, 128, 128, 64, 8, 8, 3),
)


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
    fp8_backend: str = "triton"
    fp8_grouped: tuple[GroupedRule, ...] = DEFAULT_GROUPED
    mxfp4_rules: tuple[Mxfp4LaunchRule, ...] = MXFP4_BUILTIN_RULES
    mxfp4_source: str = MXFP4_BUILTIN_SOURCE

    def validate(self, where: str) -> None:
        _check_rules(self.rules, f"{where}.rules")
        _check_rules(self.fp8_rules, f"{where}.fp8_rules")
        _check_rules(self.mxfp4_rules, f"{where}.mxfp4_rules")
        for i, mx in enumerate(self.mxfp4_rules):  # also for entries built in code
            Mxfp4LaunchRule.validate(mx, f"{where}.mxfp4_rules[{i}]")
        if self.fp8_backend not in FP8_BACKENDS:
            raise TableError(f"{where}.fp8_backend: must be one of {list(FP8_BACKENDS)}, got "
                             f"{self.fp8_backend!r}")
        if not self.fp8_grouped or self.fp8_grouped[-1].max_rows is not None:
            raise TableError(f"{where}.fp8_grouped: needs rules, the last with max_rows null")
        for i, rule in enumerate(self.fp8_grouped):
            rule.validate(f"{where}.fp8_grouped[{i}]")

    def rule(self, tokens: int, quant: str | None) -> MoeLaunchRule:
        rules = {None: self.rules, "fp8_block": self.fp8_rules,
                 "mxfp4": self.mxfp4_rules}[quant]
        return next(r for r in rules if r.max_tokens is None or tokens <= r.max_tokens)

    def grouped_config(self, rows: int) -> str:
        """The CUTLASS grouped configuration for R = rows routed rows ("triton": none)."""
        return _config_for(self.fp8_grouped, rows)

    def cutlass_config(self, rows: int, arch_major: int = 9) -> str:
        """The CUTLASS configuration fp8_blockwise_grouped_mm runs for R rows on a GPU of
        compute capability arch_major.x: the rule's, or where the rule keeps fused_moe on
        Triton or names another arch's kernel, the default for this arch."""
        config = self.grouped_config(rows)
        if config == TRITON or not config.startswith(f"sm{arch_major}0_"):
            if arch_major == 10:
                return SM100_DEFAULT_GROUPED
            config = _config_for(DEFAULT_GROUPED, rows)
        return config

    def fp8_grouped_config(self, rows: int) -> str | None:
        """The grouped configuration fused_moe's fp8 path runs for R rows, None: Triton."""
        if self.fp8_backend != "cutlass":
            return None
        config = self.grouped_config(rows)
        return None if config == TRITON else config


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
_forced_fp8_backend: str | None = None
_forced_entry: MoeDispatch | None = None


@contextlib.contextmanager
def forced_entry(entry: MoeDispatch | None) -> Iterator[None]:
    """Within the block, `entry` stands in for the tables' `moe` entry (None: the tables'
    own; for the tuner, which times candidate entries)."""
    global _forced_entry
    before, _forced_entry = _forced_entry, entry
    try:
        yield
    finally:
        _forced_entry = before


@contextlib.contextmanager
def forced_fp8_backend(backend: str | None) -> Iterator[None]:
    """Within the block, fused_moe's fp8 path takes `backend` whatever the table says (None:
    the table's; for the bench and the tuner, which compare the two)."""
    global _forced_fp8_backend
    if backend is not None and backend not in FP8_BACKENDS:
        raise ValueError(f"fp8 backend must be one of {list(FP8_BACKENDS)}, got {backend!r}")
    before, _forced_fp8_backend = _forced_fp8_backend, backend
    try:
        yield
    finally:
        _forced_fp8_backend = before


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
    entry = choice.entry if _forced_entry is None else _forced_entry
    if _forced_fp8_backend is not None:
        entry = dataclasses.replace(entry, fp8_backend=_forced_fp8_backend)
        if any(r.config == TRITON for r in entry.fp8_grouped):  # forced: CUTLASS throughout
            entry = dataclasses.replace(entry, fp8_grouped=DEFAULT_GROUPED)
    return entry
