"""topk_softmax: softmax routing of a token over E experts (Qwen3-MoE, Mixtral, GPT-OSS).

    default:                 p = softmax(logits) over all E (fp32); take the k largest p,
                             descending; renormalize=True divides them by their sum
    softmax_after_topk=True: take the k largest logits; softmax over those k (GPT-OSS)

gating_logits [T, E] bf16/fp16/fp32, contiguous last dim, any row stride, 1 <= k <= E <= 512.
Writes topk_weights float32 [T, k] and topk_ids int32 [T, k] (contiguous last dims).
Ties: experts are ranked by logit (the same order as by probability); among equal logits
the lowest expert index comes first. NaN logits give unspecified routing.
CUDA: one Triton pass, a few tokens per program for small E, programmatic dependent launch
on sm_90+ unless enable_pdl=False; no host sync. CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl

_SCHEMA = ("topk_softmax(Tensor(a!) topk_weights, Tensor(b!) topk_ids, Tensor gating_logits, "
           "bool renormalize=False, bool softmax_after_topk=False, bool? enable_pdl=None) -> ()")
MAX_EXPERTS = 512


def topk_lowest_index(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest scores per row, descending, ties to the lowest index (a stable sort;
    torch.topk does not promise an order among ties)."""
    values, idx = torch.sort(scores, dim=-1, descending=True, stable=True)
    return values[..., :k], idx[..., :k]


def reference_topk_softmax(logits: torch.Tensor, topk: int, renormalize: bool = False,
                           softmax_after_topk: bool = False
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32 (weights, int32 ids): the CPU kernel and the test oracle."""
    x = logits.float()
    top, ids = topk_lowest_index(x, topk)
    if softmax_after_topk:
        weights = torch.softmax(top, dim=-1)
    else:
        weights = torch.softmax(x, dim=-1).gather(-1, ids)
        if renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, ids.to(torch.int32)


def _check(topk_weights: torch.Tensor, topk_ids: torch.Tensor, gating_logits: torch.Tensor,
           renormalize: bool = False, softmax_after_topk: bool = False,
           enable_pdl: bool | None = None) -> None:
    op = "topk_softmax"
    x = gating_logits
    if x.dim() != 2:
        fail(op, "gating_logits", f"must be [tokens, experts], got {list(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        fail(op, "gating_logits", f"must be bfloat16, float16 or float32, got {x.dtype}")
    if not 1 <= x.size(1) <= MAX_EXPERTS:
        fail(op, "gating_logits", f"must have 1..{MAX_EXPERTS} experts, got {x.size(1)}")
    if x.size(1) > 1 and x.stride(1) != 1:
        fail(op, "gating_logits", "must have a contiguous last dim")
    if topk_weights.dim() != 2 or topk_weights.size(0) != x.size(0):
        fail(op, "topk_weights", f"must be [{x.size(0)}, topk], got {list(topk_weights.shape)}")
    k = topk_weights.size(1)
    if not 1 <= k <= x.size(1):
        fail(op, "topk", f"must be in 1..{x.size(1)} (the expert count), got {k}")
    for name, t, dtype in (("topk_weights", topk_weights, torch.float32),
                           ("topk_ids", topk_ids, torch.int32)):
        if list(t.shape) != [x.size(0), k]:
            fail(op, name, f"must be {[x.size(0), k]}, got {list(t.shape)}")
        if t.dtype != dtype or t.device != x.device:
            fail(op, name, f"must be {dtype} on {x.device}, got {t.dtype} on {t.device}")
        if k > 1 and t.stride(1) != 1:
            fail(op, name, "must have a contiguous last dim")


def _cpu(topk_weights: torch.Tensor, topk_ids: torch.Tensor, gating_logits: torch.Tensor,
         renormalize: bool = False, softmax_after_topk: bool = False,
         enable_pdl: bool | None = None) -> None:
    _check(topk_weights, topk_ids, gating_logits)
    w, ids = reference_topk_softmax(gating_logits, topk_weights.size(1), renormalize,
                                    softmax_after_topk)
    topk_weights.copy_(w)
    topk_ids.copy_(ids)


def launch_topk_softmax(topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                        gating_logits: torch.Tensor, renormalize: bool,
                        softmax_after_topk: bool, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.moe_routing import topk_softmax_kernel

    tokens, experts = gating_logits.shape
    if tokens == 0:
        return
    block_e = next_pow2(experts)
    # Small E leaves a program mostly idle: give it several tokens (about 2K elements).
    block_t = max(1, min(16, 2048 // block_e))
    k = topk_weights.size(1)
    extra = {"launch_pdl": True} if pdl else {}
    topk_softmax_kernel[(-(-tokens // block_t),)](
        gating_logits, topk_weights, topk_ids, tokens, experts, gating_logits.stride(0),
        topk_weights.stride(0), topk_ids.stride(0), TOPK=k, RENORMALIZE=renormalize,
        SOFTMAX_AFTER_TOPK=softmax_after_topk, BLOCK_T=block_t, BLOCK_E=block_e,
        BLOCK_K=next_pow2(k), USE_PDL=pdl, num_warps=4 if block_t * block_e >= 1024 else 2,
        **extra)


def _cuda(topk_weights: torch.Tensor, topk_ids: torch.Tensor, gating_logits: torch.Tensor,
          renormalize: bool = False, softmax_after_topk: bool = False,
          enable_pdl: bool | None = None) -> None:
    _check(topk_weights, topk_ids, gating_logits)
    launch_topk_softmax(topk_weights, topk_ids, gating_logits, renormalize, softmax_after_topk,
                        use_pdl(enable_pdl, gating_logits.device))


def topk_softmax(gating_logits: torch.Tensor, topk: int, renormalize: bool = False, *,
                 softmax_after_topk: bool = False, enable_pdl: bool | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Route each token of gating_logits [T, E]: returns (weights float32 [T, topk],
    ids int32 [T, topk]), best first. See the module docstring for the two modes."""
    if not isinstance(topk, int) or topk < 1:
        fail("topk_softmax", "topk", f"must be a positive int, got {topk!r}")
    tokens = gating_logits.size(0) if gating_logits.dim() else 0
    weights = torch.empty(tokens, topk, dtype=torch.float32, device=gating_logits.device)
    ids = torch.empty(tokens, topk, dtype=torch.int32, device=gating_logits.device)
    torch.ops.fuseinfer.topk_softmax(weights, ids, gating_logits, renormalize,
                                     softmax_after_topk, enable_pdl=enable_pdl)
    return weights, ids


define(_SCHEMA)
impl_cpu("topk_softmax", _cpu)
impl_fake("topk_softmax", _check)
LIB.impl("topk_softmax", _cuda, "CUDA")


__all__ = ["topk_softmax"]
