"""MoE routing on the CPU: topk_softmax and moe_fused_gate, their references against float64
math written here (per token, in plain Python), the tie rule, argument errors, fake impls,
and the Triton kernels run by Triton's interpreter against the references (poisoned
outputs, strided rows, token counts off the per-program block)."""

from __future__ import annotations

import math
import os

import pytest
import torch

from fuseinfer.ops import moe_fused_gate, topk_softmax
from fuseinfer.ops.moe.moe_fused_gate import launch_moe_fused_gate, reference_moe_fused_gate
from fuseinfer.ops.moe.topk_softmax import launch_topk_softmax, reference_topk_softmax

needs_interpreter = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="a GPU is present: the GPU suite runs these kernels natively")

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
MODES = [(False, False), (True, False), (False, True)]  # (renormalize, softmax_after_topk)
# (experts, groups, topk_group, topk, shared): DeepSeek-V3, V2, V2-Lite, Kimi-K2, odd ones
GATES = [(256, 8, 4, 8, 1), (160, 8, 3, 6, 0), (64, 1, 1, 6, 0), (384, 1, 1, 8, 1),
         (96, 3, 2, 5, 0), (8, 8, 3, 3, 0)]
MARGIN = 1e-5  # a token whose decisions are closer than this may route either way


def ranked(values: list[float]) -> list[int]:
    """Indices by value, descending, equal values by lowest index (the tie rule)."""
    return sorted(range(len(values)), key=lambda i: (-values[i], i))


def float64_topk_softmax(x: torch.Tensor, k: int, renormalize: bool, after: bool
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    weights, ids = [], []
    for row in x.double().tolist():
        top = ranked(row)[:k]
        if after:
            e = [math.exp(row[i] - row[top[0]]) for i in top]
            w = [v / sum(e) for v in e]
        else:
            m = max(row)
            denom = sum(math.exp(v - m) for v in row)
            w = [math.exp(row[i] - m) / denom for i in top]
            if renormalize:
                w = [v / sum(w) for v in w]
        weights.append(w)
        ids.append(top)
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(ids)


def float64_gate(x: torch.Tensor, bias: torch.Tensor, groups: int, topk_group: int, k: int,
                 scale: float, on_output: bool, shared: int
                 ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """DeepSeek-V3 routing per token in float64; also each token's margin: the smallest gap
    between scores on either side of a decision (group cut, expert order and cut)."""
    b = bias.double().tolist()
    weights, ids, margins = [], [], []
    for row in x.double().tolist():
        s = [1.0 / (1.0 + math.exp(-v)) for v in row]
        sb = [v + c for v, c in zip(s, b, strict=True)]
        width = len(s) // groups
        gscore = []
        for g in range(groups):
            best = sorted(sb[g * width:(g + 1) * width], reverse=True)
            gscore.append(sum(best[:2]))
        gorder = ranked(gscore)
        kept = [e for g in sorted(gorder[:topk_group]) for e in range(g * width, (g + 1) * width)]
        order = [kept[i] for i in ranked([sb[e] for e in kept])]
        gaps = [sb[order[i]] - sb[order[i + 1]] for i in range(min(k, len(order) - 1))]
        if topk_group < groups:
            gaps.append(gscore[gorder[topk_group - 1]] - gscore[gorder[topk_group]])
        margins.append(min(gaps, default=math.inf))
        top = order[:k]
        total = sum(s[e] for e in top)
        w = [s[e] / total * (scale if on_output else 1.0) for e in top]
        w += [1.0 if on_output else 1.0 / scale] * shared
        weights.append(w)
        ids.append(top + list(range(len(s), len(s) + shared)))
    return torch.tensor(weights, dtype=torch.float64), torch.tensor(ids), margins


def assert_routing(w: torch.Tensor, ids: torch.Tensor, want_w: torch.Tensor,
                   want_ids: torch.Tensor, margins: list[float] | None = None,
                   tol: float = 1e-5) -> None:
    """Ids equal and weights close on every token whose margin is clear (all of them when
    margins is None); near-ties must stay rare."""
    clear = torch.tensor([m > MARGIN for m in margins]) if margins else \
        torch.ones(ids.size(0), dtype=torch.bool)
    assert clear.float().mean() >= 0.9, "too many near-ties for the check to mean much"
    assert ids.dtype == torch.int32 and w.dtype == torch.float32
    assert torch.equal(ids[clear].long(), want_ids[clear].long())
    torch.testing.assert_close(w[clear].double(), want_w[clear].double(), rtol=tol, atol=tol)
    assert not torch.isnan(w).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("experts, k", [(8, 2), (60, 4), (128, 8), (512, 8), (1, 1)])
@pytest.mark.parametrize("renormalize, after", MODES)
def test_topk_softmax_op_matches_float64(dtype, experts, k, renormalize, after):
    x = (torch.randn(6, experts) * 2).to(dtype)
    w, ids = topk_softmax(x, k, renormalize, softmax_after_topk=after)
    assert w.shape == ids.shape == (6, k)
    assert_routing(w, ids, *float64_topk_softmax(x, k, renormalize, after))
    if renormalize or after:
        torch.testing.assert_close(w.sum(-1), torch.ones(6), rtol=1e-6, atol=1e-6)
    assert (w[:, :-1] >= w[:, 1:]).all()  # best first


def test_topk_softmax_ties_go_to_the_lowest_index():
    x = torch.randint(0, 3, (12, 16)).float()  # many equal logits per token
    x[0] = 1.0  # a token with every logit equal
    want_w, want_ids = float64_topk_softmax(x, 5, True, False)
    assert want_ids[0].tolist() == [0, 1, 2, 3, 4]
    w, ids = topk_softmax(x, 5, True)
    assert_routing(w, ids, want_w, want_ids)
    if os.environ.get("TRITON_INTERPRET") == "1":
        w.fill_(float("nan"))
        ids.fill_(-1)
        launch_topk_softmax(w, ids, x, True, False, pdl=False)
        assert_routing(w, ids, want_w, want_ids)


def test_topk_softmax_errors_name_the_argument():
    x = torch.randn(4, 16)
    with pytest.raises(ValueError, match="topk_softmax: gating_logits must be"):
        topk_softmax(torch.randn(4, 16, dtype=torch.float64), 2)
    with pytest.raises(ValueError, match="gating_logits must be \\[tokens, experts\\]"):
        topk_softmax(torch.randn(2, 4, 16), 2)
    with pytest.raises(ValueError, match="gating_logits must have 1..512 experts"):
        topk_softmax(torch.randn(4, 513), 2)
    with pytest.raises(ValueError, match="gating_logits must have a contiguous last dim"):
        topk_softmax(torch.randn(16, 4).t(), 2)
    with pytest.raises(ValueError, match="topk must be in 1..16"):
        topk_softmax(x, 17)
    with pytest.raises(ValueError, match="topk must be a positive int"):
        topk_softmax(x, 0)
    w, ids = torch.empty(4, 2), torch.empty(4, 2, dtype=torch.int32)
    with pytest.raises(ValueError, match="topk_ids must be torch.int32"):
        torch.ops.fuseinfer.topk_softmax(w, ids.long(), x)
    with pytest.raises(ValueError, match="topk_ids must be \\[4, 2\\]"):
        torch.ops.fuseinfer.topk_softmax(w, ids[:, :1], x)
    with pytest.raises(ValueError, match="topk_weights must be torch.float32"):
        torch.ops.fuseinfer.topk_softmax(w.half(), ids, x)


def test_topk_softmax_meta_and_empty():
    w, ids = topk_softmax(torch.empty(5, 128, device="meta", dtype=torch.bfloat16), 8)
    assert w.shape == ids.shape == (5, 8) and w.device.type == "meta"
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    w, ids = topk_softmax(torch.empty(0, 64), 4)
    assert w.shape == (0, 4) and ids.shape == (0, 4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("experts, groups, topk_group, k, shared", GATES[:4])
def test_moe_fused_gate_reference_matches_float64(dtype, experts, groups, topk_group, k,
                                                   shared):
    x = torch.randn(16, experts).to(dtype)
    bias = torch.randn(experts) * 0.1
    for on_output in (False, True):
        want = float64_gate(x, bias, groups, topk_group, k, 2.5, on_output, shared)
        got = reference_moe_fused_gate(x, bias, groups, topk_group, k, 2.5, on_output, shared)
        assert_routing(*got, *want)


@pytest.mark.parametrize("experts, groups, topk_group, k, shared", GATES)
def test_moe_fused_gate_op_matches_float64(experts, groups, topk_group, k, shared):
    x = torch.randn(12, experts, dtype=torch.bfloat16) * 2
    bias = torch.rand(experts) * 0.2
    w, ids = moe_fused_gate(x, bias, groups, topk_group, k, 2.5, False, shared)
    assert w.shape == ids.shape == (12, k + shared)
    assert_routing(w, ids, *float64_gate(x, bias, groups, topk_group, k, 2.5, False, shared))
    torch.testing.assert_close(w[:, :k].sum(-1), torch.ones(12), rtol=1e-6, atol=1e-6)
    assert (ids[:, :k] < experts).all() and (ids[:, k:] == experts).all()
    # the chosen experts all lie in topk_group groups
    assert max(len(set((row // (experts // groups)).tolist())) for row in ids[:, :k]) \
        <= topk_group


def test_moe_fused_gate_ties_go_to_the_lowest_index():
    # four sigmoid values whose pairwise sums are all distinct: ties only where equal
    x = torch.randint(0, 4, (12, 64)).float()
    x[0] = 2.0  # every expert of the token equal: groups 0, 1 and experts 0..5 win
    bias = torch.zeros(64)
    want_w, want_ids, _ = float64_gate(x, bias, 8, 2, 6, 1.0, False, 0)
    assert want_ids[0].tolist() == [0, 1, 2, 3, 4, 5]
    w, ids = moe_fused_gate(x, bias, 8, 2, 6)
    assert_routing(w, ids, want_w, want_ids)
    if os.environ.get("TRITON_INTERPRET") == "1":
        w.fill_(float("nan"))
        ids.fill_(-1)
        launch_moe_fused_gate(w, ids, x, bias, 8, 2, 1.0, False, 0, pdl=False)
        assert_routing(w, ids, want_w, want_ids)


def test_moe_fused_gate_errors_name_the_argument():
    x, bias = torch.randn(4, 64), torch.zeros(64)
    with pytest.raises(ValueError, match="moe_fused_gate: num_expert_group must divide"):
        moe_fused_gate(x, bias, 5, 2, 4)
    with pytest.raises(ValueError, match="topk_group must be in 1..8"):
        moe_fused_gate(x, bias, 8, 9, 4)
    with pytest.raises(ValueError, match="topk must be in 1..16"):
        moe_fused_gate(x, bias, 8, 2, 17)
    with pytest.raises(ValueError, match="num_fused_shared_experts must be 0 or 1"):
        moe_fused_gate(x, bias, 8, 2, 4, 2.5, False, 2)
    with pytest.raises(ValueError, match="bias must be \\[64\\]"):
        moe_fused_gate(x, torch.zeros(32), 8, 2, 4)
    with pytest.raises(ValueError, match="bias must be \\[64\\]"):
        moe_fused_gate(x.half(), bias.double(), 8, 2, 4)
    with pytest.raises(ValueError, match="routed_scaling_factor must be positive"):
        moe_fused_gate(x, bias, 8, 2, 4, 0.0)
    with pytest.raises(ValueError, match="scores must be bfloat16"):
        moe_fused_gate(x.long(), bias, 8, 2, 4)
    with pytest.raises(ValueError, match="scores must have a contiguous last dim"):
        moe_fused_gate(torch.randn(64, 4).t(), bias, 8, 2, 4)


def test_moe_fused_gate_meta_and_empty():
    x = torch.empty(3, 256, device="meta", dtype=torch.bfloat16)
    w, ids = moe_fused_gate(x, torch.empty(256, device="meta"), 8, 4, 8, 2.5, True, 1)
    assert w.shape == ids.shape == (3, 9) and w.device.type == "meta"
    assert w.dtype == torch.float32 and ids.dtype == torch.int32
    w, ids = moe_fused_gate(torch.empty(0, 64), torch.zeros(64), 4, 2, 4)
    assert w.shape == (0, 4)


@needs_interpreter
@pytest.mark.parametrize("experts, k, tokens", [(8, 2, 19), (60, 4, 3), (128, 8, 5),
                                                (512, 8, 2)])
@pytest.mark.parametrize("renormalize, after", MODES)
def test_topk_softmax_kernel_interpreted(experts, k, tokens, renormalize, after):
    x = torch.randn(tokens, experts + 7, dtype=torch.bfloat16)[:, :experts]  # strided rows
    buf = torch.full((tokens, k + 3), float("nan"))
    w, ids = buf[:, :k], torch.full((tokens, k), -1, dtype=torch.int32)
    launch_topk_softmax(w, ids, x, renormalize, after, pdl=False)
    assert_routing(w, ids, *reference_topk_softmax(x, k, renormalize, after), tol=1e-6)
    assert torch.isnan(buf[:, k:]).all()  # nothing written past the row's k slots


@needs_interpreter
@pytest.mark.parametrize("experts, groups, topk_group, k, shared", GATES)
@pytest.mark.parametrize("on_output", [False, True])
def test_moe_fused_gate_kernel_interpreted(experts, groups, topk_group, k, shared, on_output):
    x = torch.randn(3, experts + 5, dtype=torch.bfloat16)[:, :experts] * 2
    bias = torch.rand(experts) * 0.2
    buf = torch.full((3, k + shared + 2), float("nan"))
    w, ids = buf[:, :k + shared], torch.full((3, k + shared), -1, dtype=torch.int32)
    launch_moe_fused_gate(w, ids, x, bias, groups, topk_group, 2.5, on_output, shared,
                          pdl=False)
    want = reference_moe_fused_gate(x, bias, groups, topk_group, k, 2.5, on_output, shared)
    margins = float64_gate(x, bias, groups, topk_group, k, 2.5, on_output, shared)[2]
    assert_routing(w, ids, *want, margins, tol=1e-6)
    assert torch.isnan(buf[:, k + shared:]).all()


def test_routing_traces_under_torch_compile():
    def route(x: torch.Tensor, scores: torch.Tensor, bias: torch.Tensor):
        return (*topk_softmax(x, 4, True), *moe_fused_gate(scores, bias, 8, 4, 8, 2.5, False, 1))

    x, scores, bias = torch.randn(5, 64), torch.randn(5, 256), torch.rand(256)
    got = torch.compile(route, fullgraph=True, backend="aot_eager")(x, scores, bias)
    for a, b in zip(got, route(x, scores, bias), strict=True):
        assert torch.equal(a, b)
