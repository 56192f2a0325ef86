"""moe_fused_gate: DeepSeek-V3 grouped routing with a correction bias, one pass per token.

    s    = sigmoid(scores)              fp32, [T, E]
    s_b  = s + bias                     bias: the correction bias [E]
    the E experts form num_expert_group equal groups of E / num_expert_group
    group score = sum of the two largest s_b in the group (the largest alone for 1-wide
                  groups); keep the topk_group best groups
    take the topk largest s_b among the kept groups' experts, descending
    weights = s (without bias) of those experts / their sum
              (* routed_scaling_factor if apply_routed_scaling_factor_on_output)

num_fused_shared_experts = 1 appends one slot per token for the shared expert, fused into
the routed experts' GEMM as expert E: id E, weight 1 / routed_scaling_factor, or 1 when
the factor is applied here (either way the shared expert ends up with weight 1 after the
caller's scaling). Values above 1 (replicated shared experts, each token picking one
replica) are refused: the replica choice is not defined here.

scores [T, E] bf16/fp16/fp32, contiguous last dim, any row stride; bias [E] float32 (or the
scores' dtype), contiguous; E <= 512. Writes topk_weights float32 and topk_ids int32, both
[T, topk + num_fused_shared_experts], contiguous last dims.
Ties: among equal group scores the lowest group index wins, among equal s_b the lowest
expert index. NaN scores give unspecified routing.
CUDA: one Triton program per token, programmatic dependent launch on sm_90+ unless
enable_pdl=False; no host sync. CPU: the reference below.
"""

from __future__ import annotations

import torch

from ..arg_checks import FLOAT_DTYPES, fail
from ..library import LIB, define, impl_cpu, impl_fake
from ..triton_launch import next_pow2, use_pdl
from .topk_softmax import MAX_EXPERTS, topk_lowest_index

_SCHEMA = ("moe_fused_gate(Tensor(a!) topk_weights, Tensor(b!) topk_ids, Tensor scores, "
           "Tensor bias, int num_expert_group, int topk_group, "
           "float routed_scaling_factor=1.0, bool apply_routed_scaling_factor_on_output=False, "
           "int num_fused_shared_experts=0, bool? enable_pdl=None) -> ()")


def reference_moe_fused_gate(scores: torch.Tensor, bias: torch.Tensor, num_expert_group: int,
                             topk_group: int, topk: int, routed_scaling_factor: float = 1.0,
                             apply_routed_scaling_factor_on_output: bool = False,
                             num_fused_shared_experts: int = 0
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """The semantics in float32 (weights, int32 ids): the CPU kernel and the test oracle."""
    tokens, experts = scores.shape
    s = torch.sigmoid(scores.float())
    sb = s + bias.float()
    grouped = sb.view(tokens, num_expert_group, experts // num_expert_group)
    best2, _ = topk_lowest_index(grouped, min(2, grouped.size(-1)))
    _, groups = topk_lowest_index(best2.sum(dim=-1), topk_group)
    keep = torch.zeros(tokens, num_expert_group, dtype=torch.bool, device=scores.device)
    keep.scatter_(1, groups, True)
    masked = sb.masked_fill(~keep.repeat_interleave(experts // num_expert_group, dim=1),
                            float("-inf"))
    _, ids = topk_lowest_index(masked, topk)
    weights = s.gather(1, ids)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    shared = 1.0 / routed_scaling_factor
    if apply_routed_scaling_factor_on_output:
        weights, shared = weights * routed_scaling_factor, 1.0
    if num_fused_shared_experts:
        shared_ids = torch.arange(experts, experts + num_fused_shared_experts,
                                  device=scores.device).expand(tokens, -1)
        ids = torch.cat([ids, shared_ids], dim=1)
        weights = torch.cat([weights, torch.full_like(shared_ids, shared, dtype=torch.float32)],
                            dim=1)
    return weights, ids.to(torch.int32)


def _check(topk_weights: torch.Tensor, topk_ids: torch.Tensor, scores: torch.Tensor,
           bias: torch.Tensor, num_expert_group: int, topk_group: int,
           routed_scaling_factor: float = 1.0,
           apply_routed_scaling_factor_on_output: bool = False,
           num_fused_shared_experts: int = 0, enable_pdl: bool | None = None) -> None:
    op = "moe_fused_gate"
    if scores.dim() != 2:
        fail(op, "scores", f"must be [tokens, experts], got {list(scores.shape)}")
    tokens, experts = scores.shape
    if scores.dtype not in FLOAT_DTYPES:
        fail(op, "scores", f"must be bfloat16, float16 or float32, got {scores.dtype}")
    if not 1 <= experts <= MAX_EXPERTS:
        fail(op, "scores", f"must have 1..{MAX_EXPERTS} experts, got {experts}")
    if experts > 1 and scores.stride(1) != 1:
        fail(op, "scores", "must have a contiguous last dim")
    if list(bias.shape) != [experts] or bias.dtype not in (torch.float32, scores.dtype):
        fail(op, "bias", f"must be [{experts}] float32 or {scores.dtype}, got {bias.dtype} "
             f"{list(bias.shape)}")
    if bias.device != scores.device or (experts > 1 and bias.stride(0) != 1):
        fail(op, "bias", f"must be contiguous on {scores.device}")
    if num_expert_group < 1 or experts % num_expert_group:
        fail(op, "num_expert_group", f"must divide the expert count {experts}, got "
             f"{num_expert_group}")
    if not 1 <= topk_group <= num_expert_group:
        fail(op, "topk_group", f"must be in 1..{num_expert_group}, got {topk_group}")
    if num_fused_shared_experts not in (0, 1):
        fail(op, "num_fused_shared_experts", f"must be 0 or 1, got {num_fused_shared_experts}"
             " (choosing among replicated shared experts is not implemented)")
    if not routed_scaling_factor > 0:
        fail(op, "routed_scaling_factor", f"must be positive, got {routed_scaling_factor}")
    if topk_weights.dim() != 2 or topk_weights.size(0) != tokens:
        fail(op, "topk_weights", f"must be [{tokens}, topk + num_fused_shared_experts], got "
             f"{list(topk_weights.shape)}")
    width = topk_weights.size(1)
    topk, allowed = width - num_fused_shared_experts, topk_group * experts // num_expert_group
    if not 1 <= topk <= allowed:
        fail(op, "topk", f"must be in 1..{allowed} (topk_group * experts per group), got {topk}")
    for name, t, dtype in (("topk_weights", topk_weights, torch.float32),
                           ("topk_ids", topk_ids, torch.int32)):
        if list(t.shape) != [tokens, width]:
            fail(op, name, f"must be {[tokens, width]}, got {list(t.shape)}")
        if t.dtype != dtype or t.device != scores.device:
            fail(op, name, f"must be {dtype} on {scores.device}, got {t.dtype} on {t.device}")
        if width > 1 and t.stride(1) != 1:
            fail(op, name, "must have a contiguous last dim")


def _cpu(topk_weights: torch.Tensor, topk_ids: torch.Tensor, scores: torch.Tensor,
         bias: torch.Tensor, num_expert_group: int, topk_group: int,
         routed_scaling_factor: float = 1.0, apply_routed_scaling_factor_on_output: bool = False,
         num_fused_shared_experts: int = 0, enable_pdl: bool | None = None) -> None:
    _check(topk_weights, topk_ids, scores, bias, num_expert_group, topk_group,
           routed_scaling_factor, apply_routed_scaling_factor_on_output,
           num_fused_shared_experts)
    w, ids = reference_moe_fused_gate(
        scores, bias, num_expert_group, topk_group,
        topk_weights.size(1) - num_fused_shared_experts, routed_scaling_factor,
        apply_routed_scaling_factor_on_output, num_fused_shared_experts)
    topk_weights.copy_(w)
    topk_ids.copy_(ids)


def launch_moe_fused_gate(topk_weights: torch.Tensor, topk_ids: torch.Tensor,
                          scores: torch.Tensor, bias: torch.Tensor, num_expert_group: int,
                          topk_group: int, routed_scaling_factor: float,
                          apply_routed_scaling_factor_on_output: bool,
                          num_fused_shared_experts: int, pdl: bool) -> None:
    """The Triton launch (also used directly by the interpreter tests on the CPU)."""
    from ...triton.moe_routing import moe_fused_gate_kernel

    tokens, experts = scores.shape
    if tokens == 0:
        return
    per_group = experts // num_expert_group
    width = topk_weights.size(1)
    extra = {"launch_pdl": True} if pdl else {}
    moe_fused_gate_kernel[(tokens,)](
        scores, bias, topk_weights, topk_ids, experts, per_group, scores.stride(0),
        topk_weights.stride(0), topk_ids.stride(0), float(routed_scaling_factor),
        GROUPS=num_expert_group, TOPK_GROUP=topk_group,
        TOPK=width - num_fused_shared_experts, SHARED=num_fused_shared_experts,
        SCALE_OUTPUT=apply_routed_scaling_factor_on_output,
        BLOCK_G=next_pow2(num_expert_group), BLOCK_V=next_pow2(per_group),
        BLOCK_K=next_pow2(width), USE_PDL=pdl,
        num_warps=4 if next_pow2(experts) >= 256 else 2, **extra)


def _cuda(topk_weights: torch.Tensor, topk_ids: torch.Tensor, scores: torch.Tensor,
          bias: torch.Tensor, num_expert_group: int, topk_group: int,
          routed_scaling_factor: float = 1.0, apply_routed_scaling_factor_on_output: bool = False,
          num_fused_shared_experts: int = 0, enable_pdl: bool | None = None) -> None:
    _check(topk_weights, topk_ids, scores, bias, num_expert_group, topk_group,
           routed_scaling_factor, apply_routed_scaling_factor_on_output,
           num_fused_shared_experts)
    launch_moe_fused_gate(topk_weights, topk_ids, scores, bias, num_expert_group, topk_group,
                          routed_scaling_factor, apply_routed_scaling_factor_on_output,
                          num_fused_shared_experts, use_pdl(enable_pdl, scores.device))


def moe_fused_gate(scores: torch.Tensor, bias: torch.Tensor, num_expert_group: int,
                   topk_group: int, topk: int, routed_scaling_factor: float = 1.0,
                   apply_routed_scaling_factor_on_output: bool = False,
                   num_fused_shared_experts: int = 0, *, enable_pdl: bool | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 routing of scores [T, E]: returns (weights float32, ids int32), both
    [T, topk + num_fused_shared_experts], routed experts best first, shared slot last."""
    if not isinstance(topk, int) or topk < 1:
        fail("moe_fused_gate", "topk", f"must be a positive int, got {topk!r}")
    tokens = scores.size(0) if scores.dim() else 0
    width = topk + max(num_fused_shared_experts, 0)
    weights = torch.empty(tokens, width, dtype=torch.float32, device=scores.device)
    ids = torch.empty(tokens, width, dtype=torch.int32, device=scores.device)
    torch.ops.fuseinfer.moe_fused_gate(
        weights, ids, scores, bias, num_expert_group, topk_group, routed_scaling_factor,
        apply_routed_scaling_factor_on_output, num_fused_shared_experts, enable_pdl=enable_pdl)
    return weights, ids


define(_SCHEMA)
impl_cpu("moe_fused_gate", _cpu)
impl_fake("moe_fused_gate", _check)
LIB.impl("moe_fused_gate", _cuda, "CUDA")


__all__ = ["moe_fused_gate"]
