"""Dispatch-table entry `fp8_gemm`: which CUTLASS configuration runs an FP8 blockwise GEMM.

Rules are tried in order; the first whose bounds hold for the problem (M tokens, N output
channels, K input channels) names the configuration. The menu is finite: one translation
unit per name in csrc/gemm (sm90_* for Hopper, sm100_* for Blackwell), and a table may only
name those. `fuseinfer tune fp8-gemm` times the menu on model shapes and writes the rules.

Configuration names read <arch>_<schedule>_<tile M>x<tile N>_c<cluster M>x<cluster N>[_streamk]:
coop/ping are the Cooperative/Pingpong warp-specialized kernels, swap computes out^T so a
small M becomes the MMA's N (tile N then covers tokens), streamk splits K across SMs when
there are fewer output tiles than SMs. `triton_gemv` is not CUTLASS: a Triton kernel that
streams the weights with every SM for at most GEMV_MAX_M tokens (decode), on any arch.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, current_identity, lookup, register_op

OP_FAMILY = "fp8_gemm"

SM90_CONFIGS = (
    "sm90_coop_128x128_c1x1",
    "sm90_coop_128x128_c1x2",
    "sm90_coop_128x128_c2x1",
    "sm90_coop_128x128_c1x1_streamk",
    "sm90_ping_64x128_c1x1",
    "sm90_ping_64x128_c1x2",
    "sm90_swap_128x16_c1x1_streamk",
    "sm90_swap_128x32_c1x1_streamk",
    "sm90_swap_128x64_c1x1_streamk",
)
SM100_CONFIGS = (
    "sm100_1sm_128x128_c1x1",
    "sm100_2sm_256x128_c2x1",
    "sm100_swap_1sm_128x32_c1x1",
)
TRITON_GEMV = "triton_gemv"
GEMV_MAX_M = 16  # token rows the gemv kernel holds (its static loop bound)
CONFIGS = SM90_CONFIGS + SM100_CONFIGS + (TRITON_GEMV,)


@dataclass(frozen=True)
class Fp8GemmRule:
    max_m: int | None           # null: any M
    config: str
    max_n: int | None = None    # null: any N
    min_k_over_n: float | None = None  # the rule holds only when K >= this x N

    def validate(self, where: str) -> None:
        if self.config not in CONFIGS:
            raise TableError(f"{where}.config: unknown FP8 GEMM configuration "
                             f"'{self.config}'; the menu: {', '.join(CONFIGS)}")
        for name in ("max_m", "max_n"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise TableError(f"{where}.{name}: must be >= 1 or null, got {value}")
        if self.min_k_over_n is not None and self.min_k_over_n <= 0:
            raise TableError(f"{where}.min_k_over_n: must be > 0 or null")
        if self.config == TRITON_GEMV and (self.max_m is None or self.max_m > GEMV_MAX_M):
            raise TableError(f"{where}.max_m: {TRITON_GEMV} takes at most {GEMV_MAX_M} "
                             "tokens; its rule needs max_m <= that")

    def holds(self, m: int, n: int, k: int) -> bool:
        return ((self.max_m is None or m <= self.max_m)
                and (self.max_n is None or n <= self.max_n)
                and (self.min_k_over_n is None or k >= self.min_k_over_n * n))


@dataclass(frozen=True)
class Fp8GemmDispatch:
    source: str
    enable_pdl: bool
    rules: tuple[Fp8GemmRule, ...]

    def validate(self, where: str) -> None:
        if not self.rules:
            raise TableError(f"{where}.rules: needs at least one rule")
        last = self.rules[-1]
        if (last.max_m, last.max_n, last.min_k_over_n) != (None, None, None):
            raise TableError(f"{where}.rules: the last rule must hold for every problem "
                             "(max_m, max_n and min_k_over_n null)")
        archs = {r.config.split("_", 1)[0] for r in self.rules if r.config != TRITON_GEMV}
        if len(archs) > 1:
            raise TableError(f"{where}.rules: configurations of one arch only, got "
                             f"{sorted(archs)}")

    def config_for(self, m: int, n: int, k: int) -> str:
        return next(r.config for r in self.rules if r.holds(m, n, k))


# Hopper rules from a first H200 measurement of the whole menu (2026-11-30: N x K of
# 7168x7168, 2112x7168, 24576x1536, 4096x7168, 7168x2048 at M = 1 ... 4096; geometric mean
# per M): Pingpong 64 x 128 tiles lead up to M = 128 (swap-AB + StreamK within 5-10%), one
# CTA of Cooperative 128 x 128 from M = 512. `fuseinfer tune fp8-gemm` refines them per GPU.
FP8_GEMM_BUILTIN = Fp8GemmDispatch(
    source="built-in default (Hopper; from an H200 run of the menu on 5 shapes, not tuned)",
    enable_pdl=True,
    rules=(
        Fp8GemmRule(128, "sm90_ping_64x128_c1x1"),
        Fp8GemmRule(None, "sm90_coop_128x128_c1x1"),
    ),
)
register_op(OP_FAMILY, Fp8GemmDispatch, FP8_GEMM_BUILTIN)


def effective(device: int | None = None) -> Fp8GemmDispatch:
    return lookup(OP_FAMILY, current_identity(device)).entry
