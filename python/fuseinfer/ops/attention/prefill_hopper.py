"""The warp-specialized sm_90a prefill kernel (triton/attention_prefill_hopper.py): chosen
by a prefill rule's `kernel: "hopper"` where it applies, with the portable kernel
everywhere else (other GPUs, FP8 caches, head dims other than 64 and 128, rows the bulk
copy cannot address). It reads the plan's work items and writes what the portable kernel
writes, so the two are interchangeable call by call (the portable kernel takes 192-row
items in 64-row pieces: launch.py)."""

from __future__ import annotations

import functools
import warnings
from typing import Any

import torch

from ..kvcache.store_kv_cache import slot_rows
from .arguments import PrefillArgs, PrefillLaunch, softmax_scale
from .reference import page_size_of

# query rows of a tile: a consumer warpgroup per 64 (two, or three at head_dim 64 only: three
# consumers get 160 registers a thread, too few for head_dim 128's S and O); a rule's
# num_warps is its consumers' (block_m // 16), a producer warp comes on top
BLOCK_MS = (128, 192)
HEAD_DIMS = (64, 128)
# shared memory an sm_90 block may hold (227 KiB), less a margin for the barriers and the
# compiler's scratch (4.2 KB more than the tiles at head_dim 128, 3 stages, Triton 3.6)
SMEM_BYTES = 227 * 1024 - 8 * 1024


def smem_bytes(head_dim: int, block_n: int, stages: int, block_m: int = 128) -> int:
    """Q tile plus `stages` K and V tiles, 16-bit."""
    return 2 * head_dim * (block_m + 2 * stages * block_n)


def consumer_warps(block_m: int) -> int:
    """The rule's num_warps at this tile: four per 64 query rows."""
    return block_m // 16


def block_m_problem(block_m: int, head_dim: int) -> str | None:
    """Why the kernel cannot run tiles of block_m rows at this head dim (None: it can)."""
    if block_m not in BLOCK_MS:
        return f"the hopper kernel's block_m is one of {list(BLOCK_MS)}, got {block_m}"
    if block_m > 128 and head_dim > 64:
        return f"the hopper kernel runs block_m {block_m} at head_dim 64 only (three " \
               f"consumers' registers), not {head_dim}"
    return None


def hopper_rule_problem(rule: Any) -> str | None:
    """Why a prefill rule (dispatch.PrefillLaunchRule) cannot ask for this kernel (None: it
    can)."""
    if rule.block_m not in BLOCK_MS or rule.num_warps != consumer_warps(rule.block_m):
        return f"the hopper kernel runs block_m {' or '.join(map(str, BLOCK_MS))} over " \
               f"block_m / 16 warps, got block_m {rule.block_m} and {rule.num_warps} warps"
    if rule.block_n not in (64, 128):
        return f"the hopper kernel's block_n is 64 or 128, got {rule.block_n}"
    if not 2 <= rule.num_stages <= 4:
        return f"the hopper kernel keeps 2-4 tiles in flight, got num_stages " \
               f"{rule.num_stages}"
    dims = [d for d in HEAD_DIMS if rule.max_head_dim is None or d <= rule.max_head_dim]
    if not dims:
        return f"the hopper kernel runs head_dim {HEAD_DIMS}, the rule's max_head_dim is " \
               f"{rule.max_head_dim}"
    widest = max(dims)
    problem = block_m_problem(rule.block_m, widest)
    if problem:
        return f"{problem} (set max_head_dim)"
    need = smem_bytes(widest, rule.block_n, rule.num_stages, rule.block_m)
    if need > SMEM_BYTES:
        return f"{rule.num_stages} stages of {rule.block_n}-key tiles at head_dim {widest} " \
               f"need {need} bytes of shared memory, more than {SMEM_BYTES}"
    return None


def _aligned(t: torch.Tensor, *strides: int) -> bool:
    item = t.element_size()
    return t.data_ptr() % 16 == 0 and all((s * item) % 16 == 0 for s in strides)


# why this process stopped using the kernel (None: it has not): the Triton it runs on could
# not compile it (the low-level dialect it is written in changes between releases)
unavailable: str | None = None


def _on_sm90(t: torch.Tensor) -> bool:
    return t.device.type == "cuda" and torch.cuda.get_device_capability(t.device) == (9, 0)


def hopper_prefill_fits(a: PrefillArgs) -> bool:
    """Whether this kernel takes the call: the launch asks for it, an sm_90 GPU, a 16-bit q
    and cache of one dtype, head_dim 64 or 128, each q head's row and each slot's heads
    contiguous and 16-byte aligned, pages a multiple of 8 slots (or of the key block)."""
    q, k_cache, v_cache = a.q, a.k_cache, a.v_cache
    launch = PrefillLaunch._make(a.launch)
    if not launch.hopper_kernel or unavailable is not None or not _on_sm90(q):
        return False
    head_dim = q.size(2)
    if head_dim not in HEAD_DIMS or q.dtype not in (torch.bfloat16, torch.float16) \
            or k_cache.dtype != q.dtype or v_cache.dtype != q.dtype:
        return False
    if block_m_problem(launch.block_m, head_dim) is not None \
            or smem_bytes(head_dim, launch.block_n, launch.num_stages,
                          launch.block_m) > SMEM_BYTES:
        return False
    if q.stride(2) != 1 or q.stride(1) != head_dim or not _aligned(q, q.stride(0)):
        return False
    page_size = page_size_of(k_cache)
    tile = min(launch.block_n, page_size)
    if tile % 8 or (launch.block_n % page_size and page_size % launch.block_n):
        return False
    for cache in (k_cache, v_cache):
        _, _, stride = slot_rows(cache, "paged_attention", "cache")
        if cache.stride(-1) != 1 or cache.stride(-2) != head_dim or not _aligned(cache, stride):
            return False
    return True


@functools.cache
def _sm_count(device_index: int | None) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _descriptor(t: torch.Tensor, rows: int, row_stride: int, width: int, block: list[int]):
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

    dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor(t, [rows, width], [row_stride, 1], block, layout)


# configurations launched once already (compiled): their later launches are not guarded
_launched: set[tuple] = set()


def _configuration(a: PrefillArgs) -> tuple:
    """What a compiled variant of the kernel depends on."""
    launch = PrefillLaunch._make(a.launch)
    return (a.q.dtype, a.q.size(1) // a.k_cache.size(-2), a.q.size(2),
            page_size_of(a.k_cache), launch.block_m, launch.block_n, launch.num_stages,
            launch.pingpong,
            a.window_left is not None, None if a.sinks is None else a.sinks.dtype,
            a.logit_cap > 0, a.lse is not None,
            # Triton compiles the scheduled launch apart (an int argument of 1 is a constant)
            bool(launch.persistent) and a.schedule is not None)


def launch_prefill_hopper(a: PrefillArgs) -> bool:
    """Launch on a call hopper_prefill_fits accepted (the op has checked the arguments);
    False, with one warning per process, where this Triton cannot build the kernel: the
    caller then runs the portable kernel, and every later call goes there directly. Only a
    configuration's first launch (its import, compile and load) is guarded: Gluon's API
    changes between Triton releases, so that may fail as an import, attribute, compile or
    backend error; later launches raise what they raise."""
    global unavailable
    key = _configuration(a)
    if key in _launched:
        _launch(a)
        return True
    try:
        _launch(a)
    except Exception as err:  # any failure to build it: the portable kernel runs the call
        from ...jit.triton_compile_check import error_line

        unavailable = error_line(err)
        import triton

        warnings.warn(f"paged prefill: the sm_90a kernel does not build with Triton "
                      f"{triton.__version__} ({unavailable}); the portable kernel runs "
                      "instead", RuntimeWarning, stacklevel=2)
        return False
    _launched.add(key)
    return True


def _launch(a: PrefillArgs) -> None:
    from ...triton.attention_prefill_hopper import prefill_hopper_kernel

    q, k_cache, v_cache, out, lse, sinks = a.q, a.k_cache, a.v_cache, a.out, a.lse, a.sinks
    launch = PrefillLaunch._make(a.launch)
    num_items, (tokens, q_heads, head_dim) = a.work.size(0), q.shape
    if num_items == 0 or tokens == 0:
        return
    page_size = page_size_of(k_cache)
    tile = min(launch.block_n, page_size)
    slots, width, k_stride = slot_rows(k_cache, "paged_attention", "k_cache")
    _, _, v_stride = slot_rows(v_cache, "paged_attention", "v_cache")
    q_desc = _descriptor(q, tokens, q.stride(0), q_heads * head_dim, [64, head_dim])
    k_desc = _descriptor(k_cache, slots, k_stride, width, [tile, head_dim])
    v_desc = _descriptor(v_cache, slots, v_stride, width, [tile, head_dim])
    dummy = a.kv_lens  # stands in for absent optional tensors; never read
    num_tiles = q_heads * num_items
    # persistent: the plan's schedule, else the kernel's alternating waves over an SM each
    schedule = a.schedule if launch.persistent else None
    programs = num_tiles if not launch.persistent else schedule.size(1) \
        if schedule is not None else min(num_tiles, _sm_count(q.device.index))
    prefill_hopper_kernel[(programs,)](
        q_desc, k_desc, v_desc, out, lse if lse is not None else dummy,
        sinks if sinks is not None else dummy, a.page_table, a.q_indptr, a.kv_lens, a.work,
        schedule if schedule is not None else dummy, int(schedule is not None),
        softmax_scale(a), a.logit_cap, a.window_left if a.window_left is not None else 0,
        slots, num_tiles, q_heads, out.stride(0), out.stride(1),
        lse.stride(0) if lse is not None else 0, a.page_table.stride(0),
        GROUP=q_heads // k_cache.size(-2), PAGE_SIZE=page_size, HEAD_DIM=head_dim,
        BLOCK_M=launch.block_m, BLOCK_N=launch.block_n, STAGES=launch.num_stages,
        HAS_WINDOW=a.window_left is not None, HAS_SINKS=sinks is not None,
        HAS_CAP=a.logit_cap > 0, HAS_LSE=lse is not None, PINGPONG=bool(launch.pingpong),
        num_warps=4)  # one consumer warpgroup; the kernel adds the rest
