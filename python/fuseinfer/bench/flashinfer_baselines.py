"""FlashInfer as a baseline timed in the same run as our kernels, on the same buffers.

The suites call FlashInfer through the wrappers here, each taking what our op takes:
rmsnorm, fused_add_rmsnorm and their Gemma variants (norm suite), RoPE with a cos/sin
cache (rope suite), the small-batch bf16 GEMM (gemm suite), paged decode and causal
prefill/extend over our paged KV (attention suite), and silu_and_mul (no suite times our
silu_and_mul yet; the wrapper is checked by the GPU tests). The version the project pins
is PINNED_VERSION; the one a run imported is recorded with it (environment "flashinfer").

FlashInfer is optional: nothing here imports it until a wrapper is called, and without it
(CPU machines, CI) `available()` is False and the suites leave its column '-'. Its kernels
JIT-compile on first call; the agreement check below makes that first call, and
time_calls warms up again before measuring, so compile time never reaches a figure.

Agreement: before a FlashInfer call is timed, its output is compared with ours on the same
inputs; a relative error ||theirs - ours|| / ||ours|| above AGREE_REL_ERR (or NaN) puts
`flashinfer_error` in the row and the call is not timed.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .timing import TimingResult

NAME = "flashinfer"
PINNED_VERSION = "0.7.2.post1"
AGREE_REL_ERR = 2e-2  # bf16 outputs of the same math differ by ~3e-3
WORKSPACE_BYTES = 128 << 20  # the float workspace FlashInfer's docs recommend
SINKS_NOTE = "flashinfer: its attention-sink variant (BatchAttentionWithAttentionSinkWrapper)"


def available(*submodules: str) -> bool:
    """FlashInfer and the given submodules ("norm", "rope", ...) import on this machine."""
    try:
        importlib.import_module(NAME)
        for sub in submodules:
            importlib.import_module(f"{NAME}.{sub}")
    except Exception:  # ImportError, or a FlashInfer that cannot start here
        return False
    return True


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def worst_rel_err(pairs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> float:
    """The largest relative error over (got, want) pairs; NaN if any is NaN."""
    return torch.tensor([rel_err(got, want) for got, want in pairs]).max().item()


def describe(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[-1][:200] if lines else ''}"


def check_then_time(row: dict[str, Any], agreement: Callable[[], float],
                    time: Callable[[], TimingResult], ours_us: float) -> None:
    """Add `flashinfer_rel_err` (from `agreement`, FlashInfer against ours) and then either
    `flashinfer_us`, `vs_flashinfer` (its time over ours) and `flashinfer_timing` (the
    method: "cuda_graph" unless its calls could not be captured) or `flashinfer_error`: it
    disagrees (and is not timed) or it failed to run."""
    try:
        err = agreement()
    except Exception as error:  # a baseline that cannot run a shape is reported, not fatal
        row["flashinfer_error"] = describe(error)
        return
    row["flashinfer_rel_err"] = err
    if not err <= AGREE_REL_ERR:  # NaN included
        row["flashinfer_error"] = (f"disagrees with ours: rel err {err:.1e} > "
                                   f"{AGREE_REL_ERR:.0e}, not timed")
        return
    try:
        timed = time()
    except Exception as error:
        row["flashinfer_error"] = describe(error)
        return
    row["flashinfer_us"] = timed.median_us
    row["vs_flashinfer"] = timed.median_us / ours_us
    row["flashinfer_timing"] = timed.method


# ---- norm ---------------------------------------------------------------------------------
NORM_OPS = ("rmsnorm", "fused_add_rmsnorm", "gemma_rmsnorm", "gemma_fused_add_rmsnorm")


def norm(op: str) -> Callable[..., None]:
    """FlashInfer's kernel for our norm op `op` (FlashInfer uses the same four names), called
    with our op's arguments: (input, residual, weight, eps, enable_pdl) for the fused ops,
    in place on input and residual as ours; (out, input, weight, eps, enable_pdl) for the
    others, writing into out as ours."""
    if op not in NORM_OPS:
        raise ValueError(f"flashinfer has no norm op '{op}' (choose from {NORM_OPS})")
    module = importlib.import_module(f"{NAME}.norm")
    fn = getattr(module, op)
    if "fused" in op:
        return lambda x, r, w, eps, pdl=None: fn(x, r, w, eps, enable_pdl=pdl)
    return lambda y, x, w, eps, pdl=None: fn(x, w, eps, out=y, enable_pdl=pdl)


# ---- rope ---------------------------------------------------------------------------------
def rope_inplace(positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor,
                 head_size: int, cos_sin_cache: torch.Tensor, is_neox: bool) -> None:
    """Rotate query and key in place, as our rope does. FlashInfer's cache layout is ours
    (float32 [max_position, rotary_dim], cos half then sin half; is_neox False means
    interleaved pairs), positions int32 or int64, and it takes strided rows (column slices
    of a fused qkv buffer), so the suite's inputs go in unconverted."""
    from flashinfer.rope import apply_rope_with_cos_sin_cache_inplace

    apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cos_sin_cache,
                                          is_neox)


# ---- activation ---------------------------------------------------------------------------
def silu_and_mul(out: torch.Tensor, input: torch.Tensor, enable_pdl: bool | None = None
                 ) -> None:
    """silu(gate) * up of input [tokens, 2 * inner] into out, our op's argument order."""
    from flashinfer.activation import silu_and_mul as flashinfer_silu_and_mul

    flashinfer_silu_and_mul(input, out=out, enable_pdl=enable_pdl)


# ---- small-M matmul -----------------------------------------------------------------------
def small_m_matmul(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                   enable_pdl: bool | None = None) -> None:
    """out = x @ w.T, small_batch_linear's argument order, with FlashInfer's small-batch
    bf16 GEMM (`tinygemm_bf16`: SM90+, bf16 only, K a multiple of 64 and N of 16; it
    raises ValueError on anything else)."""
    from flashinfer.gemm import tinygemm_bf16

    tinygemm_bf16(x, w, out, None, bool(enable_pdl))


# ---- paged attention ----------------------------------------------------------------------
@dataclass(frozen=True)
class PageIndex:
    """FlashInfer's description of a paged KV batch (CSR over pages)."""

    indptr: torch.Tensor  # int32 [batch + 1]: request b's pages are indices[indptr[b]:...]
    indices: torch.Tensor  # int32 [indptr[-1]]
    last_page_len: torch.Tensor  # int32 [batch]: tokens in each request's last page


def page_index(page_table: torch.Tensor, kv_lens: Sequence[int], page_size: int
               ) -> PageIndex:
    """Our page table (int32 [batch, max_pages], request b's token t in page
    page_table[b, t // page_size]; entries past its last page are padding) as a PageIndex."""
    counts = [-(-n // page_size) for n in kv_lens]
    device = page_table.device
    indptr = torch.tensor([0, *itertools.accumulate(counts)], dtype=torch.int32, device=device)
    indices = torch.cat([page_table[b, :c] for b, c in enumerate(counts)]).to(torch.int32)
    last = [n - (c - 1) * page_size if c else 0 for n, c in zip(kv_lens, counts, strict=True)]
    return PageIndex(indptr, indices.contiguous(),
                     torch.tensor(last, dtype=torch.int32, device=device))


def paged_kv(cache: torch.Tensor) -> torch.Tensor:
    """Our K or V cache as FlashInfer's NHD [pages, page_size, kv_heads, head_dim]: the
    paged cache as it is; a page-size-1 cache [slots, kv_heads, head_dim] viewed with a unit
    page dim. K and V stay separate tensors (FlashInfer takes the pair as a tuple)."""
    return cache.unsqueeze(1) if cache.dim() == 3 else cache


def decode_uses_tensor_cores(q_heads: int, kv_heads: int) -> bool:
    """FlashInfer decode's tensor-core path for GQA groups of 4 or more q heads, the rule
    serving engines use with bf16/fp16 KV."""
    return q_heads // kv_heads >= 4


# Its own pick first (FA3 on Hopper), then FA2: a trimmed install may carry FA2 only.
ATTENTION_BACKENDS = ("auto", "fa2")
# (backend, kernel) pairs that failed to build or plan here, and why: not retried, since
# a failed JIT build can cost tens of seconds per row.
_UNBUILDABLE: dict[tuple[str, tuple[Any, ...]], str] = {}


@dataclass
class PlannedAttention:
    """A planned FlashInfer wrapper; calling it runs attention into `out`."""

    wrapper: Any
    extra: tuple[torch.Tensor, ...]  # run()'s extra tensors (the sink variant's sinks)
    backend: str  # as FlashInfer resolved it
    fallbacks: dict[str, str]  # backends tried first that could not run here: why

    def __call__(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 out: torch.Tensor) -> Any:
        return self.wrapper.run(q, (paged_kv(k_cache), paged_kv(v_cache)), *self.extra,
                                out=out)


def plan_paged_attention(kind: str, q_lens: Sequence[int], kv_lens: Sequence[int],
                         page_table: torch.Tensor, q_heads: int, kv_heads: int,
                         head_dim: int, page_size: int, dtype: torch.dtype, *,
                         sm_scale: float, window_left: int | None = None,
                         sinks: torch.Tensor | None = None,
                         backends: Sequence[str] = ATTENTION_BACKENDS) -> PlannedAttention:
    """Plan FlashInfer's paged decode (kind "decode", one query per request) or causal
    prefill/extend (the new tokens already in the cache, queries bottom-right aligned as
    ours) over our page table, with the first of `backends` that builds here; call the
    result as run(q, k_cache, v_cache, out), q and out [tokens, q_heads, head_dim]. The
    plan (host work, and the JIT build) happens here, outside any timing.

    With `sinks` (one logit per q head) both kinds run FlashInfer's attention-sink variant
    (BatchAttentionWithAttentionSinkWrapper, a prefill kernel, one query per request for
    decode): its plain decode/prefill kernels for sm90 and older (fa2/fa3) drop the sinks
    argument."""
    if kind not in ("decode", "prefill"):
        raise ValueError(f"unknown attention kind '{kind}' (decode, prefill)")
    kernel = (kind, head_dim, dtype, sinks is not None, window_left is not None,
              kind == "decode" and decode_uses_tensor_cores(q_heads, kv_heads))
    fallbacks: dict[str, str] = {}
    for backend in backends:
        known = _UNBUILDABLE.get((backend, kernel))
        if known is not None:
            fallbacks[backend] = known
            continue
        try:
            wrapper, extra = _plan(backend, kind, q_lens, kv_lens, page_table, q_heads,
                                   kv_heads, head_dim, page_size, dtype, sm_scale,
                                   window_left, sinks)
        except Exception as error:
            if backend == backends[-1]:
                raise
            fallbacks[backend] = _UNBUILDABLE[(backend, kernel)] = describe(error)
            continue
        return PlannedAttention(wrapper, extra, resolved_backend(wrapper, backend), fallbacks)
    raise RuntimeError(f"no FlashInfer backend left to try: {fallbacks}")


def resolved_backend(wrapper: Any, requested: str) -> str:
    """The backend a planned wrapper runs. The decode wrapper reports it as
    `resolved_backend` (its CUDA-core kernel keeps `_backend` "auto" but is "fa2"); the
    prefill wrapper overwrites `_backend` with its pick in plan(), the sink variant in its
    constructor."""
    resolved = getattr(wrapper, "resolved_backend", None)
    return str(resolved or getattr(wrapper, "_backend", requested))


def _plan(backend: str, kind: str, q_lens: Sequence[int], kv_lens: Sequence[int],
          page_table: torch.Tensor, q_heads: int, kv_heads: int, head_dim: int,
          page_size: int, dtype: torch.dtype, sm_scale: float, window_left: int | None,
          sinks: torch.Tensor | None) -> tuple[Any, tuple[torch.Tensor, ...]]:
    index = page_index(page_table, kv_lens, page_size)
    device = page_table.device
    workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
    # FlashInfer's window_left is ours: from query position p, key j is kept when
    # j >= p - window_left (its variants' mask kv_idx + qo_len + window_left >= kv_len +
    # qo_idx, p = kv_len - qo_len + qo_idx), the query's own key included; -1: no window.
    window = -1 if window_left is None else window_left
    options = {"window_left": window, "q_data_type": dtype, "kv_data_type": dtype,
               "sm_scale": sm_scale}
    qo_indptr = torch.tensor([0, *itertools.accumulate(q_lens)], dtype=torch.int32,
                             device=device)
    pages = (index.indptr, index.indices, index.last_page_len)
    if sinks is not None:
        from flashinfer.attention import BatchAttentionWithAttentionSinkWrapper

        wrapper = BatchAttentionWithAttentionSinkWrapper(
            workspace, "NHD", backend=backend, q_data_type=dtype, kv_data_type=dtype,
            head_dim_qk=head_dim, head_dim_vo=head_dim, window_left=window)
        wrapper.plan(qo_indptr, *pages, q_heads, kv_heads, head_dim, page_size, causal=True,
                     **options)
        return wrapper, (sinks.float().contiguous(),)  # its "sink": float32 [q_heads]
    if kind == "decode":
        from flashinfer.decode import BatchDecodeWithPagedKVCacheWrapper

        wrapper = BatchDecodeWithPagedKVCacheWrapper(
            workspace, "NHD", use_tensor_cores=decode_uses_tensor_cores(q_heads, kv_heads),
            backend=backend)
        wrapper.plan(*pages, q_heads, kv_heads, head_dim, page_size, **options)
        return wrapper, ()
    from flashinfer.prefill import BatchPrefillWithPagedKVCacheWrapper

    wrapper = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
    wrapper.plan(qo_indptr, *pages, q_heads, kv_heads, head_dim, page_size, causal=True,
                 **options)
    return wrapper, ()
