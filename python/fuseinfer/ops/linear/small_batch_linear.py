"""small_batch_linear: out = x @ weight.T for decode steps of a few tokens.

    x [M, K], weight [N, K] (nn.Linear layout), out [M, N]; bf16/fp16/fp32, all the same;
    last dims contiguous; fp32 accumulation, rounded once.

Every call takes M <= MAX_M (64) and any K. Prologues:
silu_mul=True: x is [M, 2K] = [gate | up] and the matmul takes silu(gate) * up (rounded
to x's dtype), so a decode step's MLP activation needs no kernel of its own.
norm_weight: the matmul takes rmsnorm(x) * norm_weight (eps). With residual too it takes
rmsnorm(x + residual) * norm_weight and writes x + residual to residual_out (a tensor
other than residual): the fused_add_rmsnorm before a projection, folded into it.
Epilogue: add ([M, N], or [N] for a bias) is added to the result before its rounding (a
residual add or a bias folded into the matmul).

At small M a matmul only streams the weight. Two Triton kernels, picked by the `linear`
dispatch entry per M for plain calls (which may also name cuBLAS, torch.mm, for an M
where neither wins). A call with a prologue or the epilogue takes the gemv at one token
(K <= 16384), else split_k with the tile the table names for its M (cuBLAS
has no prologues):
- gemv (triton/small_batch_linear.py): a fixed grid (the rule's min_programs) walks the
  weight in tiles of whole rows (K padded to a power of two) through shared memory,
  num_stages deep; each program's first tile is loaded before the wait on the previous
  kernel, so with PDL the weight read overlaps that kernel. At one token a prologue runs
  once per program, not once per tile; M <= 8, K <= 16384.
- split_k (triton/small_m_matmul.py): weight tiles over the tensor cores, K split across
  programs and the slices summed in the last program of each N tile (no extra launch); a
  per-(device, stream) counter buffer, left at zero by every call, counts the arrivals.
  Its RMSNorm prologue scales the summed result by each row's 1/rms, which the slices'
  sums of squares give, so no slice needs the whole row first.
Larger M belongs to cuBLAS (torch.matmul). CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail, overlaps
from ..arrival_counters import ArrivalCounters
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl

_SCHEMA = ("small_batch_linear(Tensor(a!) out, Tensor x, Tensor weight, bool silu_mul=False, "
           "Tensor? norm_weight=None, Tensor? residual=None, Tensor(b!)? residual_out=None, "
           "float eps=1e-06, bool? enable_pdl=None, Tensor? add=None) -> ()")
MAX_M = 64
GEMV_MAX_K = 16384
GEMV_MAX_M = 8
_TILE_BYTES = 32768  # gemv: weight bytes per tile (K_PAD * BLOCK_N * itemsize), per stage
# gemv: shared memory its walk may take (stages - 1 tiles in flight there): what every
# sm_80+ GPU gives one block, so a deeper rule or an fp32 weight takes fewer stages
_WALK_SMEM_BYTES = 96 * 1024
# gemv: up to this padded K the first tile is held in registers through the walk; past it
# that would leave room for one program per SM (local sm_90a build: 133 registers at 16384)
_FIRST_LAST_MAX_K = 8192
# gemv: with fewer tiles than this per program the walk's pipeline only adds its fill (on
# the H200 Qwen3-0.6B's projections ran faster with a tile per program), so each program
# takes one tile
_MIN_TILES_PER_PROGRAM = 2
# split_k's arrival counters per (device, stream): split > 1 only while the N tiles are
# fewer than min_programs (at most 2^14), so this many always suffice
_MAX_TILES = 1 << 14


def reference_small_batch_linear(x: torch.Tensor, weight: torch.Tensor,
                                 silu_mul: bool = False, norm_weight: torch.Tensor | None = None,
                                 residual: torch.Tensor | None = None, eps: float = 1e-6,
                                 add: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(float32 out, the new residual or None), each prologue rounded to x's dtype as its
    own kernel would store it: the CPU kernel and the test oracle."""
    if silu_mul:
        from ..activation.silu_and_mul import reference_silu_and_mul

        x = reference_silu_and_mul(x).to(x.dtype)
    new_residual = None
    if residual is not None:
        x = new_residual = (x.float() + residual.float()).to(x.dtype)
    if norm_weight is not None:
        from ..norm.rmsnorm import reference_rmsnorm

        x = reference_rmsnorm(x, norm_weight, eps).to(x.dtype)
    y = x.float() @ weight.float().t()
    return (y if add is None else y + add.float()), new_residual


def _check(out, x, weight, silu_mul=False, norm_weight=None, residual=None,
           residual_out=None, eps=1e-6, enable_pdl=None, add=None) -> None:
    op = "small_batch_linear"
    if x.dim() != 2 or not 0 <= x.size(0) <= MAX_M:
        fail(op, "x", f"must be [M, K] with M <= {MAX_M}, got {list(x.shape)}")
    k = x.size(1) // 2 if silu_mul else x.size(1)
    if silu_mul and x.size(1) % 2:
        fail(op, "x", f"must be [M, 2K] = [gate | up] with silu_mul, got {list(x.shape)}")
    if weight.dim() != 2 or weight.size(1) != k:
        fail(op, "weight", f"must be [N, {k}], got {list(weight.shape)}")
    if k < 1:
        fail(op, "x", f"K must be at least 1, got {k}")
    if x.dtype not in FLOAT_DTYPES or \
            weight.dtype != x.dtype or out.dtype != x.dtype:
        fail(op, "weight", f"x, weight and out must share a float dtype, got {x.dtype}, "
             f"{weight.dtype}, {out.dtype}")
    if list(out.shape) != [x.size(0), weight.size(0)]:
        fail(op, "out", f"must be [{x.size(0)}, {weight.size(0)}], got {list(out.shape)}")
    for name, t in (("x", x), ("weight", weight), ("out", out)):
        if t.size(1) > 1 and t.stride(1) != 1:
            fail(op, name, "must have a contiguous last dim")
    if norm_weight is None and (residual is not None or residual_out is not None):
        fail(op, "residual", "needs norm_weight (the add feeds an RMSNorm)")
    if norm_weight is not None and (norm_weight.shape != (k,) or norm_weight.dtype != x.dtype
                                    or (k > 1 and norm_weight.stride(0) != 1)):
        fail(op, "norm_weight", f"must be a contiguous [{k}] {x.dtype}, got "
             f"{list(norm_weight.shape)} {norm_weight.dtype}")
    if (residual is None) != (residual_out is None):
        fail(op, "residual_out", "and residual go together")
    for name, t in (("residual", residual), ("residual_out", residual_out)):
        if t is not None and (list(t.shape) != [x.size(0), k] or t.dtype != x.dtype
                              or (k > 1 and t.stride(1) != 1)):
            fail(op, name, f"must be [{x.size(0)}, {k}] {x.dtype} with a contiguous last "
                 f"dim, got {list(t.shape)} {t.dtype}")
    # outputs written while other programs still read the inputs must not overlap them
    for out_name, written, read in (("residual_out", residual_out, (residual, x)),
                                    ("out", out, (x, residual))):
        for source in read:
            if written is not None and source is not None and overlaps(written, source):
                fail(op, out_name, "must not overlap the inputs (other programs still read "
                     "them)")
    if norm_weight is not None and not eps > 0:
        fail(op, "eps", f"must be > 0, got {eps}")
    if add is not None and (add.dtype != x.dtype or add.shape not in (
            (weight.size(0),), (x.size(0), weight.size(0))) or add.stride(-1) != 1):
        fail(op, "add", f"must be [{x.size(0)}, {weight.size(0)}] or [{weight.size(0)}] "
             f"{x.dtype} with a contiguous last dim, got {list(add.shape)} {add.dtype}")


def _cpu(out, x, weight, silu_mul=False, norm_weight=None, residual=None, residual_out=None,
         eps=1e-6, enable_pdl=None, add=None) -> None:
    _check(out, x, weight, silu_mul, norm_weight, residual, residual_out, eps, add=add)
    y, new_residual = reference_small_batch_linear(x, weight, silu_mul, norm_weight, residual,
                                                   eps, add)
    out.copy_(y.to(out.dtype))
    if residual_out is not None:
        residual_out.copy_(new_residual)


def launch_small_batch_linear(out, x, weight, pdl: bool, silu_mul: bool = False,
                              norm_weight=None, residual=None, residual_out=None,
                              eps: float = 1e-6, programs: int | None = None,
                              stages: int | None = None, first_last: bool | None = None,
                              warps: int | None = None, add=None) -> None:
    """The gemv's Triton launch (also used directly by the interpreter tests on the CPU and
    by the bench): a grid of `programs`, each walking every programs-th weight tile through
    `stages`-deep shared memory (a program per tile where they are fewer than
    _MIN_TILES_PER_PROGRAM per program), `warps` warps each; all three default to the
    `linear` table's rule for M (min_programs, num_stages, num_warps). first_last: the
    first tile reduced after the others (default: where K fits _FIRST_LAST_MAX_K)."""
    from ...triton.small_batch_linear import gemv_kernel

    m, n, k = x.size(0), weight.size(0), weight.size(1)
    if m == 0 or n == 0:
        return
    if x.is_cuda and (programs is None or stages is None or warps is None):
        from .dispatch import effective

        rule = effective(x.device.index).rule(m, n, k)
        programs = rule.min_programs if programs is None else programs
        stages = rule.num_stages if stages is None else stages
        warps = rule.num_warps if warps is None else warps
    # the interpreter: two programs, each walking several tiles where there are four or more
    programs, stages, warps = programs or 2, stages or 2, warps or 8
    k_pad = next_pow2(k)
    # one row: a tile per stage; more rows: half of that (their inputs are held too)
    tile_bytes = _TILE_BYTES if m == 1 else _TILE_BYTES // 2
    block_n = max(1, min(64, tile_bytes // (k_pad * weight.element_size())))
    tiles = -(-n // block_n)
    if tiles < _MIN_TILES_PER_PROGRAM * programs:  # a tile per program, nothing to pipeline
        programs, stages = tiles, 1
    stage_bytes = block_n * k_pad * weight.element_size()
    stages = max(1, min(stages, 1 + _WALK_SMEM_BYTES // stage_bytes))
    extra = {"launch_pdl": True} if pdl else {}
    norm = 0 if norm_weight is None else (1 if residual is None else 2)
    gemv_kernel[(programs,)](
        x, weight, out, residual if residual is not None else x,
        norm_weight if norm_weight is not None else x,
        residual_out if residual_out is not None else out,
        add if add is not None else out, m, n, k, x.stride(0),
        weight.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0,
        add.stride(0) if add is not None and add.dim() == 2 else 0, eps,
        BLOCK_N=block_n, K_PAD=k_pad, M_MAX=1 if m == 1 else GEMV_MAX_M, SILU_MUL=silu_mul,
        NORM=norm, HAS_ADD=add is not None, STAGES=stages,
        FIRST_LAST=k_pad <= _FIRST_LAST_MAX_K if first_last is None else first_last,
        USE_PDL=pdl, num_warps=warps, **extra)


_COUNTERS = ArrivalCounters("small_batch_linear (split_k)", _MAX_TILES)


def reserve_counters(device: torch.device) -> None:
    """Allocate this GPU's split_k counters now (outside capture): for a caller whose first
    split_k call would be inside a CUDA-graph capture (the op raises there otherwise)."""
    _COUNTERS.reserve(device)


def launch_small_m_matmul(out, x, weight, rule, pdl: bool,
                          counters: torch.Tensor | None = None, silu_mul: bool = False,
                          norm_weight=None, residual=None, residual_out=None,
                          eps: float = 1e-6, add=None) -> None:
    """The split_k kernel with `rule`'s tile (a LinearRule), prologues and epilogue as the
    op's (also run directly by the interpreter tests on CPU tensors and by the bench)."""
    from ...triton.small_m_matmul import small_m_matmul_kernel

    m, n, k = x.size(0), weight.size(0), weight.size(1)
    if m == 0 or n == 0:
        return
    block_m = max(16, next_pow2(m))
    tiles = -(-n // rule.block_n)
    split, k_per_split = rule.split_k(n, k)
    partial = out
    if split > 1:
        if tiles > _MAX_TILES:
            raise ValueError(f"small_batch_linear: N = {n} is more than {_MAX_TILES} tiles of "
                             f"{rule.block_n}")
        # the slices' fp32 partials [split, M, N], then their sums of squares [split, M]
        partial = torch.empty(split * m * (n + 1), dtype=torch.float32, device=x.device)
        if counters is None:
            counters = _COUNTERS.row(x.device)
    norm = 0 if norm_weight is None else (1 if residual is None else 2)
    extra = {"launch_pdl": True} if pdl else {}
    small_m_matmul_kernel[(tiles, split)](
        x, weight, out, partial, counters if counters is not None else out,
        norm_weight if norm_weight is not None else x,
        residual if residual is not None else x,
        residual_out if residual_out is not None else out,
        add if add is not None else out, m, n, k, k_per_split, x.stride(0),
        weight.stride(0), out.stride(0), residual.stride(0) if residual is not None else 0,
        residual_out.stride(0) if residual_out is not None else 0,
        add.stride(0) if add is not None and add.dim() == 2 else 0, eps,
        BLOCK_M=block_m, BLOCK_N=rule.block_n, BLOCK_K=rule.block_k, SPLIT_K=split,
        SILU_MUL=silu_mul, NORM=norm, HAS_ADD=add is not None,
        IEEE=x.device.type != "cuda" or x.dtype == torch.float32, USE_PDL=pdl,
        num_warps=rule.num_warps, num_stages=rule.num_stages, **extra)


def _cuda(out, x, weight, silu_mul=False, norm_weight=None, residual=None, residual_out=None,
          eps=1e-6, enable_pdl=None, add=None) -> None:
    from .dispatch import effective

    _check(out, x, weight, silu_mul, norm_weight, residual, residual_out, eps, add=add)
    m, k = x.size(0), weight.size(1)
    fused = silu_mul or norm_weight is not None or add is not None
    if fused and m == 1 and k <= GEMV_MAX_K:
        # one token: the gemv (the decoder's hot path), its grid from the rule for 1
        launch_small_batch_linear(out, x, weight, use_pdl(enable_pdl, x.device), silu_mul,
                                  norm_weight, residual, residual_out, eps, add=add)
        return
    entry = effective(x.device.index)
    rule = entry.rule(m, weight.size(0), k)
    pdl = use_pdl(entry.enable_pdl if enable_pdl is None else enable_pdl, x.device)
    if fused and norm_weight is not None and x.dtype == torch.float16:
        # split_k rounds x * norm_weight before the 1/rms (applied to the sum), which can
        # pass fp16's range: the prologue as its own kernels, then the matmul
        launch_small_m_matmul(out, _prologue(x, silu_mul, norm_weight, residual,
                                             residual_out, eps, enable_pdl),
                              weight, rule, pdl, add=add)
        return
    if fused:  # cuBLAS has no prologue: split_k, with the rule's tile
        launch_small_m_matmul(out, x, weight, rule, pdl, None, silu_mul, norm_weight,
                              residual, residual_out, eps, add)
        return
    launch_rule(out, x, weight, rule, pdl)


def _prologue(x, silu_mul, norm_weight, residual, residual_out, eps, enable_pdl):
    """The prologue by its own kernels (silu_and_mul, the rounded add into residual_out,
    rmsnorm): the matmul's input."""
    from ..activation.silu_and_mul import silu_and_mul
    from ..norm.rmsnorm import rmsnorm

    h = silu_and_mul(x, enable_pdl=enable_pdl) if silu_mul else x
    if residual is not None:
        torch.add(h, residual, out=residual_out)
        h = residual_out
    return rmsnorm(h, norm_weight, eps, enable_pdl=enable_pdl)


def takes_fused(m: int, device: torch.device, dtype: torch.dtype = torch.bfloat16,
                weight: torch.Tensor | None = None) -> bool:
    """Whether a call of m rows with a prologue runs as one kernel at the speed of the plain
    one the table picks: its rule (the weight's shape rule, when given) is not cuBLAS (no
    prologue there) and, past the gemv, x is not fp16 (which takes the prologue as separate
    kernels). Otherwise a caller does better with the separate norm / activation kernel and
    then the plain call."""
    from .dispatch import effective

    if device.type != "cuda":  # the reference: any call the same
        return True
    if m == 1:
        return True
    n, k = (None, None) if weight is None else weight.shape
    return dtype != torch.float16 and effective(device.index).rule(m, n, k).kernel != "cublas"


def gemv_takes_silu(k: int, device: torch.device) -> bool:
    """Whether a 1-token matmul of K = k (the activation's width) does better with SiLU * up
    in the gemv's prologue than after silu_and_mul's kernel: the `linear` entry's
    gemv_silu_max_k (the CPU reference: always)."""
    from .dispatch import effective

    return device.type != "cuda" or k <= effective(device.index).gemv_silu_max_k


def launch_rule(out, x, weight, rule, pdl: bool) -> None:
    """A plain call as `rule` (a LinearRule) says: cuBLAS, the gemv where it can take the
    call, else split_k with the rule's tile."""
    m, k = x.size(0), weight.size(1)
    if rule.kernel == "cublas":
        torch.mm(x, weight.t(), out=out)
    elif rule.kernel == "gemv" and m <= GEMV_MAX_M and k <= GEMV_MAX_K:
        launch_small_batch_linear(out, x, weight, pdl, programs=rule.min_programs,
                                  stages=rule.num_stages, warps=rule.num_warps)
    else:
        launch_small_m_matmul(out, x, weight, rule, pdl)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, silu_mul: bool = False,
                       norm_weight: torch.Tensor | None = None,
                       residual: torch.Tensor | None = None, eps: float = 1e-6,
                       enable_pdl: bool | None = None, add: torch.Tensor | None = None
                       ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """x @ weight.T (+ add) for x of at most MAX_M rows, with the optional prologues
    (module doc).
    Returns out, or (out, the new residual x + residual) when residual is given."""
    out = torch.empty(x.size(0), weight.size(0), dtype=x.dtype, device=x.device)
    residual_out = torch.empty_like(residual) if residual is not None else None
    torch.ops.fuseinfer.small_batch_linear(out, x, weight, silu_mul=silu_mul,
                                           norm_weight=norm_weight, residual=residual,
                                           residual_out=residual_out, eps=eps,
                                           enable_pdl=enable_pdl, add=add)
    return out if residual_out is None else (out, residual_out)


define(_SCHEMA)
impl_cpu("small_batch_linear", _cpu)
impl_fake("small_batch_linear", _check)
LIB.impl("small_batch_linear", _cuda, "CUDA")


__all__ = ["small_batch_linear"]
