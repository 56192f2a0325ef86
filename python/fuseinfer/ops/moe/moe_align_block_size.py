"""moe_align_block_size: the (token, slot) rows of top-k routing grouped by expert, each
expert's group padded to a multiple of block_size, so a grouped GEMM tile of block_size
rows belongs to one expert.

topk_ids [T, k] int32 (or int64) is read flattened: row r = t * k + j. Outputs:
  sorted_token_ids int32 [max_padded]: expert 0's rows, then expert 1's, ...; within an
      expert in increasing r (stable); each expert's segment padded with the sentinel T * k
      to a multiple of block_size; after the last segment, the sentinel again;
  expert_ids int32 [max_padded // block_size]: the expert of each block; -1 past the end;
  num_tokens_post_padded int32 [1]: the padded total (the used length of sorted_token_ids).
max_padded = T * k + E * (block_size - 1) bounds the padded total from the shapes alone, so
the outputs have fixed sizes, the counts stay on the device (no host sync) and the op can be
captured in a CUDA graph. Ids outside [0, num_experts) (-1 or E for a masked slot or one a
shared expert takes) are in no segment: their rows are dropped.

CUDA: two small Triton launches (count, then scatter; triton/moe_align.py), PDL on sm_90+
unless enable_pdl=False. CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl

OP = "moe_align_block_size"
_SCHEMA = ("moe_align_block_size(Tensor(a!) sorted_token_ids, Tensor(b!) expert_ids, "
           "Tensor(c!) num_tokens_post_padded, Tensor topk_ids, int num_experts, "
           "int block_size, bool? enable_pdl=None) -> ()")
MAX_EXPERTS = 4096  # the scatter kernel holds every expert's count in one program


def max_padded_rows(rows: int, num_experts: int, block_size: int) -> int:
    """The capacity of sorted_token_ids for `rows` = T * k routed rows."""
    return rows + num_experts * (block_size - 1)


def reference_moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int
                                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The semantics (the CPU kernel and the test oracle)."""
    flat = topk_ids.reshape(-1).long()
    rows = flat.numel()
    capacity = max_padded_rows(rows, num_experts, block_size)
    sorted_ids = torch.full((capacity,), rows, dtype=torch.int32, device=topk_ids.device)
    expert_ids = torch.full((capacity // block_size,), -1, dtype=torch.int32,
                            device=topk_ids.device)
    pos = 0
    for e in range(num_experts):
        mine = (flat == e).nonzero().reshape(-1)  # ascending: the stable order
        sorted_ids[pos:pos + mine.numel()] = mine.to(torch.int32)
        padded = -(-mine.numel() // block_size) * block_size
        expert_ids[pos // block_size:(pos + padded) // block_size] = e
        pos += padded
    return sorted_ids, expert_ids, torch.tensor([pos], dtype=torch.int32,
                                                device=topk_ids.device)


def _check(sorted_token_ids: torch.Tensor, expert_ids: torch.Tensor,
           num_tokens_post_padded: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
           block_size: int, enable_pdl: bool | None = None) -> None:
    if topk_ids.dim() != 2 or topk_ids.dtype not in (torch.int32, torch.int64):
        fail(OP, "topk_ids", f"must be int32 [T, k], got {topk_ids.dtype} "
             f"{list(topk_ids.shape)}")
    if not topk_ids.is_contiguous():
        fail(OP, "topk_ids", "must be contiguous")
    if not 1 <= num_experts <= MAX_EXPERTS:
        fail(OP, "num_experts", f"must be in [1, {MAX_EXPERTS}], got {num_experts}")
    if block_size < 1:
        fail(OP, "block_size", f"must be >= 1, got {block_size}")
    capacity = max_padded_rows(topk_ids.numel(), num_experts, block_size)
    for name, t, n in (("sorted_token_ids", sorted_token_ids, capacity),
                       ("expert_ids", expert_ids, capacity // block_size),
                       ("num_tokens_post_padded", num_tokens_post_padded, 1)):
        if list(t.shape) != [n] or t.dtype != torch.int32 or not t.is_contiguous():
            fail(OP, name, f"must be contiguous int32 [{n}], got {t.dtype} {list(t.shape)}")
        if t.device != topk_ids.device:
            fail(OP, name, f"must be on {topk_ids.device} like topk_ids, got {t.device}")


def _cpu(sorted_token_ids: torch.Tensor, expert_ids: torch.Tensor,
         num_tokens_post_padded: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
         block_size: int, enable_pdl: bool | None = None) -> None:
    _check(sorted_token_ids, expert_ids, num_tokens_post_padded, topk_ids, num_experts,
           block_size)
    for out, ref in zip((sorted_token_ids, expert_ids, num_tokens_post_padded),
                        reference_moe_align_block_size(topk_ids, num_experts, block_size),
                        strict=True):
        out.copy_(ref)


def launch_moe_align_block_size(sorted_token_ids: torch.Tensor, expert_ids: torch.Tensor,
                                num_tokens_post_padded: torch.Tensor, topk_ids: torch.Tensor,
                                num_experts: int, block_size: int, pdl: bool) -> None:
    """The Triton launches (also used directly by the interpreter tests on the CPU)."""
    from ...triton.moe_align import moe_align_scatter_kernel, moe_count_kernel

    counts = torch.empty(num_experts, dtype=torch.int32, device=topk_ids.device)
    extra = {"launch_pdl": True} if pdl else {}
    block = 1024
    moe_count_kernel[(num_experts,)](topk_ids, counts, topk_ids.numel(), BLOCK=block,
                                     USE_PDL=pdl, num_warps=4, **extra)
    moe_align_scatter_kernel[(num_experts,)](
        topk_ids, counts, sorted_token_ids, expert_ids, num_tokens_post_padded,
        topk_ids.numel(), num_experts, block_size, sorted_token_ids.numel(),
        expert_ids.numel(), E_PAD=next_pow2(num_experts), BLOCK=block, USE_PDL=pdl,
        num_warps=4, **extra)


def _cuda(sorted_token_ids: torch.Tensor, expert_ids: torch.Tensor,
          num_tokens_post_padded: torch.Tensor, topk_ids: torch.Tensor, num_experts: int,
          block_size: int, enable_pdl: bool | None = None) -> None:
    _check(sorted_token_ids, expert_ids, num_tokens_post_padded, topk_ids, num_experts,
           block_size)
    launch_moe_align_block_size(sorted_token_ids, expert_ids, num_tokens_post_padded,
                                topk_ids, num_experts, block_size,
                                use_pdl(enable_pdl, topk_ids.device))


def moe_align_block_size(topk_ids: torch.Tensor, num_experts: int, block_size: int, *,
                         enable_pdl: bool | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(sorted_token_ids int32 [max_padded], expert_ids int32 [max_padded // block_size],
    num_tokens_post_padded int32 [1]) of topk_ids [T, k]; see the module docstring."""
    capacity = max_padded_rows(topk_ids.numel(), num_experts, max(block_size, 1))
    device = topk_ids.device
    sorted_ids = torch.empty(capacity, dtype=torch.int32, device=device)
    expert_ids = torch.empty(capacity // max(block_size, 1), dtype=torch.int32,
                             device=device)
    total = torch.empty(1, dtype=torch.int32, device=device)
    torch.ops.fuseinfer.moe_align_block_size(sorted_ids, expert_ids, total, topk_ids,
                                             num_experts, block_size, enable_pdl=enable_pdl)
    return sorted_ids, expert_ids, total


define(_SCHEMA)
impl_cpu(OP, _cpu)
impl_fake(OP, _check)
LIB.impl(OP, _cuda, "CUDA")


__all__ = ["moe_align_block_size"]
