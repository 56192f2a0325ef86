"""Launchers of the attention kernels: Triton (under TRITON_INTERPRET=1 also on CPU
tensors), for decode the CUDA kernel where the table picks it (decode_cuda.py), for prefill
the sm_90a kernel where the table picks it (prefill_hopper.py).
Arguments are checked by the op before they get here."""

from __future__ import annotations

import torch

from ..kvcache.store_kv_cache import FP8, scale_stride, slot_rows
from ..triton_launch import next_pow2, use_pdl
from .arguments import DecodeArgs, DecodeLaunch, PrefillArgs, PrefillLaunch, softmax_scale
from .decode_cuda import cache_strides, cuda_decode_fits, launch_cuda_decode
from .prefill_hopper import hopper_prefill_fits, launch_prefill_hopper
from .reference import page_size_of


def _flags(sinks, lse, k_cache, k_scale, window_left, logit_cap) -> dict:
    return dict(HAS_WINDOW=window_left is not None, HAS_SINKS=sinks is not None,
                HAS_CAP=logit_cap > 0, HAS_LSE=lse is not None,
                KV_SCALED=k_cache.dtype == FP8 and k_scale is not None)


def _tma_ok(cache: torch.Tensor) -> bool:
    """The bulk tensor copy needs sm_90+ (or the interpreter), 16-byte aligned base and
    strides, and slots evenly spaced."""
    if cache.device.type == "cuda" and torch.cuda.get_device_capability(cache.device)[0] < 9:
        return False
    slot, head = cache_strides(cache)
    item = cache.element_size()
    return cache.stride(-1) == 1 and cache.data_ptr() % 16 == 0 \
        and (slot * item) % 16 == 0 and (head * item) % 16 == 0


def _slot_descriptor(cache: torch.Tensor, block_n: int):
    """A tensor descriptor over the cache as [slots, kv_heads, head_dim], one page-tile
    (block_n slots of one head) per load."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    slots, _, slot = slot_rows(cache, "paged_attention", "cache")
    head = cache.stride(-2)
    heads, dim = cache.size(-2), cache.size(-1)
    return TensorDescriptor(cache, [slots, heads, dim], [slot, head, 1], [block_n, 1, dim])


def _pdl(enable_pdl: bool | None, device: torch.device) -> bool:
    """PDL for this launch: the caller's choice, else the attention table's."""
    if enable_pdl is None:
        from .dispatch import attention_table

        enable_pdl = attention_table().enable_pdl
    return use_pdl(enable_pdl, device)


def _pieces_of_64(a: PrefillArgs, launch: PrefillLaunch
                  ) -> tuple[torch.Tensor, PrefillLaunch]:
    """Work items of a tile only the sm_90a kernel runs (block_m 192, on a call
    hopper_prefill_fits or the kernel's first build turned down) as 64-query items the
    portable kernel runs, those past their request's queries dropped (-1)."""
    pieces = launch.block_m // 64
    work = a.work.repeat_interleave(pieces, dim=0)
    sub = torch.arange(pieces, dtype=work.dtype, device=work.device).repeat(a.work.size(0))
    block = work[:, 1] * pieces + sub
    req = work[:, 0]
    q_lens = (a.q_indptr[1:] - a.q_indptr[:-1])[req.clamp(min=0).long()]
    req = torch.where((req < 0) | (block * 64 >= q_lens), -1, req)
    return torch.stack([req, block], 1).contiguous(), \
        launch._replace(block_m=64, num_warps=4)


def launch_prefill(a: PrefillArgs) -> None:
    from ...triton.attention_prefill import prefill_kernel

    if hopper_prefill_fits(a) and launch_prefill_hopper(a):
        return
    q, k_cache, v_cache, kv_lens, work, out, lse, sinks = (
        a.q, a.k_cache, a.v_cache, a.kv_lens, a.work, a.out, a.lse, a.sinks)
    launch = PrefillLaunch._make(a.launch)
    if launch.block_m & (launch.block_m - 1):
        work, launch = _pieces_of_64(a, launch)
    block_n = launch.block_n
    num_items = work.size(0)
    q_heads = q.size(1)
    if num_items == 0 or q.size(0) == 0:
        return
    k_slot, k_head = cache_strides(k_cache)
    v_slot, v_head = cache_strides(v_cache)
    pdl = _pdl(a.enable_pdl, q.device)
    extra = {"launch_pdl": True} if pdl else {}
    dummy = kv_lens  # stands in for absent optional tensors; never read
    page_size = page_size_of(k_cache)
    use_tma = bool(launch.tma) and page_size % block_n == 0 and _tma_ok(k_cache) \
        and _tma_ok(v_cache)
    k_arg, v_arg = k_cache, v_cache
    if use_tma:
        k_arg = _slot_descriptor(k_cache, block_n)
        v_arg = _slot_descriptor(v_cache, block_n)
    prefill_kernel[(q_heads, num_items)](
        q, k_arg, v_arg, out, lse if lse is not None else dummy,
        sinks if sinks is not None else dummy, a.page_table, a.q_indptr, kv_lens, work,
        a.k_scale if a.k_scale is not None else dummy,
        a.v_scale if a.v_scale is not None else dummy,
        softmax_scale(a), a.logit_cap, a.window_left if a.window_left is not None else 0,
        scale_stride(a.k_scale), scale_stride(a.v_scale),
        q.stride(0), q.stride(1), k_slot, k_head, v_slot, v_head, out.stride(0),
        out.stride(1), lse.stride(0) if lse is not None else 0, a.page_table.stride(0),
        GROUP=q_heads // k_cache.size(-2), PAGE_SIZE=page_size, USE_TMA=use_tma,
        HEAD_DIM=q.size(2), BLOCK_M=launch.block_m, BLOCK_N=block_n, USE_PDL=pdl,
        DOT_F32=q.device.type == "cpu",
        num_warps=launch.num_warps, num_stages=launch.num_stages,
        **_flags(sinks, lse, k_cache, a.k_scale, a.window_left, a.logit_cap), **extra)


def launch_decode(a: DecodeArgs) -> None:
    from ...triton.attention_decode import merge_kernel

    launch = DecodeLaunch._make(a.launch)
    a = a._replace(launch=launch)
    q, kv_lens, out, lse, sinks = a.q, a.kv_lens, a.out, a.lse, a.sinks
    batch, q_heads, head_dim = q.shape
    if batch == 0:
        return
    max_splits = a.partial_lse.size(2)
    pdl = _pdl(a.enable_pdl, q.device)
    fused_merge = a.merge_counters is not None and max_splits > 1
    if cuda_decode_fits(a):
        launch_cuda_decode(a, pdl)
    else:
        _launch_triton_decode(a, launch, pdl, fused_merge)
    if max_splits > 1 and not fused_merge:
        flags = _flags(sinks, lse, a.k_cache, a.k_scale, a.window_left, a.logit_cap)
        dummy = kv_lens  # stands in for absent optional tensors; never read
        p = a.partial_lse
        merge_kernel[(batch, q_heads)](
            out, lse if lse is not None else dummy, a.partial_out, p,
            sinks if sinks is not None else dummy, kv_lens,
            a.v_scale if a.v_scale is not None else dummy,
            a.window_left if a.window_left is not None else 0, max_splits,
            scale_stride(a.v_scale), q_heads // a.k_cache.size(-2), out.stride(0),
            out.stride(1), lse.stride(0) if lse is not None else 0, p.stride(0), p.stride(1),
            p.stride(2), HEAD_DIM=head_dim, SPLITS_POW2=next_pow2(max_splits),
            MIN_CHUNK=launch.min_chunk, BLOCK_N=launch.block_n, USE_PDL=pdl,
            num_warps=4 if head_dim >= 128 else 2,
            **{k: flags[k] for k in ("HAS_WINDOW", "HAS_SINKS", "HAS_LSE", "KV_SCALED")},
            **({"launch_pdl": True} if pdl else {}))


def _launch_triton_decode(a: DecodeArgs, launch: DecodeLaunch, pdl: bool,
                          fused_merge: bool) -> None:
    from ...triton.attention_decode import decode_kernel

    q, k_cache, kv_lens, out, lse, sinks = a.q, a.k_cache, a.kv_lens, a.out, a.lse, a.sinks
    partial_out, partial_lse = a.partial_out, a.partial_lse
    batch, q_heads, head_dim = q.shape
    kv_heads = k_cache.size(-2)
    group = q_heads // kv_heads
    max_splits = partial_lse.size(2)
    use_dot = group >= launch.tensor_core_min_group
    # KV heads a program reads side by side: tensor cores only, a divisor of the KV heads
    kv_per_program = launch.kv_heads_per_program \
        if use_dot and kv_heads % launch.kv_heads_per_program == 0 else 1
    heads_per_program = max(16, next_pow2(group * kv_per_program)) if use_dot else 1
    merge = {}
    if fused_merge:  # the last piece merges its real rows, pieces in tiles of <= 1024 values
        # (sm_90a ptxas: registers as without the merge at the H200 rules; 2048 took 104 ->
        # 138 at group 4, head_dim 128)
        rows = next_pow2(group * kv_per_program) if use_dot else 1
        splits = next_pow2(max_splits)
        merge = dict(MERGE_ROWS=rows, MERGE_SPLITS=splits,
                     MERGE_CHUNK=max(1, min(splits, 1024 // (rows * head_dim))))
    k_slot, k_head = cache_strides(k_cache)
    v_slot, v_head = cache_strides(a.v_cache)
    extra = {"launch_pdl": True} if pdl else {}
    flags = _flags(sinks, lse, k_cache, a.k_scale, a.window_left, a.logit_cap)
    dummy = kv_lens
    part_strides = (partial_lse.stride(0), partial_lse.stride(1), partial_lse.stride(2))
    decode_kernel[(batch, kv_heads // kv_per_program if use_dot else q_heads, max_splits)](
        q, k_cache, a.v_cache, out, lse if lse is not None else dummy, partial_out, partial_lse,
        sinks if sinks is not None else dummy, a.page_table, kv_lens,
        a.k_scale if a.k_scale is not None else dummy,
        a.v_scale if a.v_scale is not None else dummy,
        a.merge_counters if fused_merge else dummy,
        softmax_scale(a), a.logit_cap, a.window_left if a.window_left is not None else 0,
        q_heads, max_splits,
        scale_stride(a.k_scale), scale_stride(a.v_scale), q.stride(0), q.stride(1), k_slot, k_head,
        v_slot, v_head, out.stride(0), out.stride(1), lse.stride(0) if lse is not None else 0,
        a.page_table.stride(0), *part_strides,
        GROUP=group, HEADS_PER_PROGRAM=heads_per_program, USE_DOT=use_dot,
        KV_PER_PROGRAM=kv_per_program,
        PAGE_SIZE=page_size_of(k_cache), HEAD_DIM=head_dim, BLOCK_N=launch.block_n,
        MIN_CHUNK=launch.min_chunk, FUSED_MERGE=fused_merge, USE_PDL=pdl,
        DOT_F32=q.device.type == "cpu", num_warps=launch.num_warps,
        num_stages=launch.num_stages, **merge, **flags, **extra)
