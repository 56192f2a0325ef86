"""The CUDA decode kernel (csrc/attention): each warp keeps num_stages - 1 chunks of 16
keys in flight (cp.async into a ring of its own), K, V and P sit in registers for the
MMAs, FP8 caches convert there. Chosen by a decode rule's `kernel: "cuda"` where it
applies, with the Triton kernel everywhere else. It writes what the Triton kernel writes
(a one-piece request finished, otherwise normalized partials and base-2 lse), so the
merge kernel is shared, or, given the plan's merge counters, its last piece to finish
merges them as the Triton kernel's does."""

from __future__ import annotations

import torch

from ..kvcache.store_kv_cache import FP8, slot_stride
from ..library import module_loader
from .arguments import DecodeArgs, DecodeLaunch, softmax_scale
from .reference import page_size_of

load_attention_module = module_loader("attention", "attention")
MAX_GROUP = 16  # q heads of a KV group: the MMA's 16 rows
STAGES = (2, 3, 4)  # the rule's num_stages: chunks in each warp's ring
MAX_SMEM = 227 * 1024  # sm_90's opt-in shared memory per block


def cuda_decode_smem_bytes(head_dim: int, item: int, warps: int, stages: int) -> int:
    """Shared memory of a launch (decode_mma_smem_bytes): the warps' rings of 16-key chunks
    (per lane two K runs of head_dim/4 values and four V runs of head_dim/8), reused after
    the loop for the warps' softmax states."""
    rings = warps * stages * 32 * (2 * head_dim // 4 + 4 * head_dim // 8) * item
    acc_row = head_dim + 4  # decode_mma_epilogue.cuh's acc_row: padded rows
    states = 4 * warps * 16 * (2 + acc_row)
    return max(rings, states)


def cache_strides(cache: torch.Tensor) -> tuple[int, int]:
    """(slot stride, head stride) of a [slots, h, d] or [pages, page_size, h, d] cache;
    the slot geometry is the KV-cache family's (already checked by the op)."""
    return slot_stride(cache, cache.size(-2) * cache.size(-1)), cache.stride(-2)


def cuda_decode_fits(a: DecodeArgs) -> bool:
    """Whether the CUDA kernel takes this call: the launch asks for it, a CUDA GPU (sm_80+;
    sm_89+ for an FP8 cache), tensor-core groups of at most 16 q heads, head_dim 64 or
    128, 4 or 8 warps, 2-4 stages whose rings fit shared memory, bf16/fp16 q with its own
    dtype or FP8 in the cache, 16-byte aligned rows."""
    q, k_cache, v_cache = a.q, a.k_cache, a.v_cache
    launch = DecodeLaunch._make(a.launch)
    group = q.size(1) // k_cache.size(-2)
    if not launch.cuda_kernel or q.device.type != "cuda" \
            or group < launch.tensor_core_min_group:
        return False
    if group > MAX_GROUP or q.size(2) not in (64, 128) or launch.num_warps not in (4, 8) \
            or launch.num_stages not in STAGES:
        return False
    if cuda_decode_smem_bytes(q.size(2), k_cache.element_size(), launch.num_warps,
                              launch.num_stages) > MAX_SMEM:
        return False
    if q.dtype not in (torch.bfloat16, torch.float16) or k_cache.dtype not in (q.dtype, FP8):
        return False
    # mma.sync for bf16 needs sm_80; the paired e4m3 convert sm_89
    if torch.cuda.get_device_capability(q.device) < ((8, 9) if k_cache.dtype == FP8 else (8, 0)):
        return False
    tensors = (q, k_cache, v_cache)
    item = k_cache.element_size()
    strides = (*cache_strides(k_cache), *cache_strides(v_cache))
    return all(t.data_ptr() % 16 == 0 and t.stride(-1) == 1 for t in tensors) \
        and (q.stride(0) * 2) % 16 == 0 and (q.stride(1) * 2) % 16 == 0 \
        and all(s * item % 16 == 0 for s in strides)


def launch_cuda_decode(a: DecodeArgs, pdl: bool) -> None:
    """One launch of the CUDA kernel over (request, KV head, split); with the plan's merge
    counters the last piece of each request merges the pieces (no merge kernel)."""
    launch = DecodeLaunch._make(a.launch)
    strides = [*cache_strides(a.k_cache), *cache_strides(a.v_cache)]
    load_attention_module()
    torch.ops.fuseinfer._attention_decode_mma(
        a.q, a.k_cache, a.v_cache, a.page_table, a.kv_lens, a.out, a.lse, a.partial_out,
        a.partial_lse, a.sinks, a.k_scale, a.v_scale, softmax_scale(a), a.logit_cap,
        a.window_left if a.window_left is not None else -1, page_size_of(a.k_cache),
        strides, launch.block_n, launch.min_chunk, launch.num_warps, launch.num_stages, pdl,
        a.merge_counters if a.partial_lse.size(2) > 1 else None)
