"""The sm_90a prefill kernel's place in the dispatch table, on the CPU: which rules may ask
for it, how a plan carries the choice (and PagedAttention(hopper_prefill=False) drops it),
and that a call it cannot take (here: CPU tensors) runs the portable kernel, still correct.
The kernel itself runs in tests/gpu/test_attention_prefill_hopper_gpu.py."""

from __future__ import annotations

import os
from dataclasses import replace

import pytest
import torch

from fuseinfer.bench.attention_inputs import make_paged_kv
from fuseinfer.dispatch import TableError
from fuseinfer.dispatch.schema import parse_dataclass, to_json
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.ops.attention import launch as attention_launch
from fuseinfer.ops.attention.arguments import PrefillArgs
from fuseinfer.ops.attention.dispatch import (
    ATTENTION_BUILTIN,
    AttentionDispatch,
    PrefillLaunchRule,
    hopper_rule_for,
)
from fuseinfer.ops.attention.prefill_hopper import SMEM_BYTES, hopper_prefill_fits, smem_bytes
from fuseinfer.ops.attention.reference import reference_paged_attention

BF16 = torch.bfloat16


def _hopper_table(block_n=128, stages=2):
    rule = PrefillLaunchRule(None, 128, block_n, 8, stages, True, "hopper")
    return replace(ATTENTION_BUILTIN, prefill_rules=(rule,))


@pytest.mark.parametrize("fields, problem", [
    (dict(block_m=64), "over block_m / 16 warps"),
    (dict(num_warps=4), "over block_m / 16 warps"),
    (dict(block_m=192), "over block_m / 16 warps"),  # 12 warps
    (dict(block_m=192, num_warps=12), "head_dim 64 only"),  # max_head_dim null: 128 too
    (dict(block_m=192, num_warps=12, max_head_dim=64, num_stages=5, block_n=64),
     "2-4 tiles in flight"),
    (dict(block_n=32), "block_n is 64 or 128"),
    (dict(num_stages=3), "shared memory"),  # 3 stages of 128 keys at head_dim 128
    (dict(kernel="cuda"), "must be one of"),
    (dict(num_stages=1), "2-4 tiles in flight"),
    (dict(num_stages=5, max_head_dim=64, block_n=64), "2-4 tiles in flight"),
    (dict(max_head_dim=32), "max_head_dim is 32"),
    (dict(kernel="triton", block_m=64, num_warps=4, pingpong=True), "pingpong: only with"),
    (dict(kernel="triton", block_m=64, num_warps=4, persistent=True),
     "persistent: only with"),
])
def test_rules_the_kernel_cannot_run_are_refused(fields, problem):
    rule = replace(PrefillLaunchRule(None, 128, 128, 8, 2, True, "hopper"), **fields)
    with pytest.raises(TableError, match=problem):
        rule.validate("t")


def test_stage_bound_follows_the_rules_head_dim():
    """A rule for head dims up to 64 may keep more tiles in flight than one for 128."""
    PrefillLaunchRule(64, 128, 128, 8, 4, True, "hopper").validate("t")
    with pytest.raises(TableError):
        PrefillLaunchRule(128, 128, 128, 8, 4, True, "hopper").validate("t")
    for d in (64, 128):
        r = hopper_rule_for(d)
        r.validate("t")
        assert smem_bytes(d, r.block_n, r.num_stages) <= SMEM_BYTES
        assert smem_bytes(d, r.block_n, r.num_stages + 1) > SMEM_BYTES or r.num_stages == 4


def test_the_kernel_field_survives_the_table_file():
    table = _hopper_table()
    again = parse_dataclass(AttentionDispatch, to_json(table), "t")
    assert again == table and again.prefill_rule(128).kernel == "hopper"
    old = to_json(ATTENTION_BUILTIN)  # a table written before the field: the portable one
    for r in old["prefill_rules"]:
        r.pop("kernel")
    assert all(r.kernel == "triton"
               for r in parse_dataclass(AttentionDispatch, old, "t").prefill_rules)


def test_plan_carries_the_choice_and_the_switch_drops_it():
    kv = make_paged_kv([100], 2, 64, 16, torch.float32, "cpu")
    shape = AttentionShape(8, 2, 64, 16)
    on = PagedAttention(shape, "cpu", table=_hopper_table()).plan_prefill([100], [100],
                                                                         kv.page_table)
    off = PagedAttention(shape, "cpu", table=_hopper_table(), hopper_prefill=False) \
        .plan_prefill([100], [100], kv.page_table)
    plain = PagedAttention(shape, "cpu", table=ATTENTION_BUILTIN).plan_prefill(
        [100], [100], kv.page_table)
    assert (on.launch.hopper_kernel, off.launch.hopper_kernel,
            plain.launch.hopper_kernel) == (1, 0, 0)
    assert on.launch.block_m == 128 and on.launch.pingpong == 0
    table = replace(_hopper_table(), prefill_rules=(
        replace(_hopper_table().prefill_rules[0], pingpong=True),))
    turns = PagedAttention(shape, "cpu", table=table).plan_prefill([100], [100],
                                                                   kv.page_table)
    assert (turns.launch.hopper_kernel, turns.launch.pingpong, turns.launch.persistent) \
        == (1, 1, 0)
    table = replace(_hopper_table(), prefill_rules=(
        replace(_hopper_table().prefill_rules[0], persistent=True),))
    loop = PagedAttention(shape, "cpu", table=table).plan_prefill([100], [100], kv.page_table)
    assert (loop.launch.pingpong, loop.launch.persistent) == (0, 1)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="a GPU is present: the GPU suite runs these kernels natively")
def test_a_call_the_kernel_cannot_take_runs_the_portable_one(monkeypatch):
    """CPU tensors with a launch that asks for the sm_90a kernel: fits says no, and the
    launcher runs the portable kernel (interpreted), which matches the reference."""
    monkeypatch.setattr(attention_launch, "launch_prefill_hopper",
                        lambda a: pytest.fail("the sm_90a kernel ran on CPU tensors"))
    gen = torch.Generator().manual_seed(3)
    q_lens, kv_lens = [40, 7], [90, 7]
    kv = make_paged_kv(kv_lens, 2, 64, 16, torch.float32, "cpu", poison=True, generator=gen)
    q = torch.randn(sum(q_lens), 8, 64, generator=gen)
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=_hopper_table(64, 2))
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    assert plan.launch.hopper_kernel == 1
    out = torch.full_like(q, float("nan"))
    args = PrefillArgs(q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr, plan.kv_lens,
                       plan.work, out, sm_scale=0.125, enable_pdl=False, launch=plan.launch)
    assert not hopper_prefill_fits(args)
    attention_launch.launch_prefill(args)
    want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                        plan.q_indptr, plan.kv_lens, sm_scale=0.125)
    torch.testing.assert_close(out, want, rtol=2e-3, atol=2e-3)


def _three_consumer_table(min_window: int = 0) -> AttentionDispatch:
    """head_dim 64 on 192-row sm_90a tiles, falling back to a 64-row portable rule."""
    return replace(ATTENTION_BUILTIN, hopper_prefill_min_window=min_window, prefill_rules=(
        PrefillLaunchRule(64, 192, 128, 12, 2, True, "hopper", persistent=True),
        PrefillLaunchRule(64, 64, 32, 4, 2, True),
        PrefillLaunchRule(None, 128, 64, 4, 2, True)))


def _covered(work: torch.Tensor, block_m: int, q_lens: list[int]) -> list[list[int]]:
    """Per request, the query blocks its work items cover (sorted)."""
    blocks: list[list[int]] = [[] for _ in q_lens]
    for req, blk in work.tolist():
        if req >= 0:
            blocks[req].append(blk)
    return [sorted(b) for b in blocks]


def test_a_192_row_rule_plans_its_own_items_and_the_portable_rules():
    """A 192-row sm_90a rule validates at head_dim 64; its plan holds 192-row items for the
    kernel and the next portable rule's 64-row items for narrow windows, each covering
    every query once; an FP8 cache plans the portable rule alone."""
    table = _three_consumer_table(min_window=1024)
    table.validate("t")
    assert table.portable_prefill_rule(64) is table.prefill_rules[1]
    assert table.portable_prefill_rule(128) is table.prefill_rules[2]
    q_lens = [500, 7, 192]
    kv_lens = [700, 7, 192]
    kv = make_paged_kv(kv_lens, 2, 64, 16, torch.float32, "cpu")
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=table)
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    assert (plan.launch.block_m, plan.launch.hopper_kernel, plan.launch.persistent) \
        == (192, 1, 1)
    assert (plan.portable_launch.block_m, plan.portable_launch.block_n,
            plan.portable_launch.hopper_kernel) == (64, 32, 0)
    for launch, bm in ((plan.launch, 192), (plan.portable_launch, 64)):
        assert _covered(plan.work_for(launch), bm, q_lens) \
            == [list(range(-(-q // bm))) for q in q_lens]
    assert attn.prefill_launch(plan, 128) == plan.portable_launch
    assert attn.prefill_launch(plan, None) == plan.launch
    fp8 = PagedAttention(AttentionShape(8, 2, 64, 16, kv_fp8=True), "cpu", table=table)
    plan8 = fp8.plan_prefill(q_lens, kv_lens, kv.page_table)
    assert (plan8.launch.block_m, plan8.launch.hopper_kernel) == (64, 0)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="a GPU is present: the GPU suite runs these kernels natively")
def test_a_192_row_call_the_kernel_declines_runs_in_64_row_pieces(monkeypatch):
    """A launch of 192-row items that the sm_90a kernel does not take (CPU tensors) runs
    the portable kernel over 64-row pieces of them, matching the reference; rows are
    poisoned first, so a piece left out shows."""
    monkeypatch.setattr(attention_launch, "launch_prefill_hopper",
                        lambda a: pytest.fail("the sm_90a kernel ran on CPU tensors"))
    gen = torch.Generator().manual_seed(5)
    q_lens, kv_lens = [200, 70, 1], [260, 70, 9]
    kv = make_paged_kv(kv_lens, 2, 64, 16, torch.float32, "cpu", poison=True, generator=gen)
    q = torch.randn(sum(q_lens), 8, 64, generator=gen)
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=_three_consumer_table())
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    assert plan.launch.block_m == 192 and plan.launch.hopper_kernel == 1
    out = torch.full_like(q, float("nan"))
    lse = torch.full(q.shape[:2], float("nan"))
    args = PrefillArgs(q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr, plan.kv_lens,
                       plan.work, out, lse=lse, sm_scale=0.125, window_left=50,
                       enable_pdl=False, launch=plan.launch)
    attention_launch.launch_prefill(args)
    want, want_lse = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                               plan.q_indptr, plan.kv_lens, sm_scale=0.125,
                                               window_left=50)
    torch.testing.assert_close(out, want, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(lse, want_lse, rtol=2e-3, atol=2e-3)


def test_narrow_windows_leave_the_kernel_to_the_portable_one():
    """Layers whose window is below the table's hopper_prefill_min_window launch with the
    sm_90a kernel off; wider windows and full layers keep it."""
    kv = make_paged_kv([100], 2, 64, 16, torch.float32, "cpu")
    table = replace(_hopper_table(), hopper_prefill_min_window=1024)
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=table)
    plan = attn.plan_prefill([100], [100], kv.page_table)
    assert [attn.prefill_launch(plan, w).hopper_kernel for w in (128, 1023, 1024, None)] \
        == [0, 0, 1, 1]
    assert attn.prefill_launch(plan, 128)._replace(hopper_kernel=1) == plan.launch


def _compile_error(message: str):
    import ast

    from triton.compiler.errors import CompilationError

    return CompilationError("def kernel(): pass", ast.parse("x").body[0], message)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="a GPU is present: the GPU suite runs these kernels natively")
@pytest.mark.parametrize("failure", [
    lambda: _compile_error("async_copy_global_to_shared has been removed"),
    lambda: ImportError("cannot import name 'warpgroup_mma' (has been removed)"),
    lambda: RuntimeError("PassManager::run failed: has been removed"),
])
def test_a_triton_that_cannot_compile_the_kernel_falls_back_once(monkeypatch, failure):
    """The sm_90a kernel is written in Triton's low-level dialect, which changes between
    releases: where its first launch fails (import, compile or backend), the call runs the
    portable kernel (still right), one warning says why, and later calls skip the
    attempt."""
    from fuseinfer.ops.attention import prefill_hopper

    monkeypatch.setattr(prefill_hopper, "unavailable", None)
    monkeypatch.setattr(prefill_hopper, "_launched", set())
    tried = []

    def broken(a):
        tried.append(1)
        raise failure()

    monkeypatch.setattr(prefill_hopper, "_launch", broken)
    # a call the kernel takes on an sm_90 GPU: only the device check is pretended
    monkeypatch.setattr(prefill_hopper, "_on_sm90", lambda t: True)
    gen = torch.Generator().manual_seed(5)
    q_lens, kv_lens = [30], [70]
    kv = make_paged_kv(kv_lens, 2, 64, 16, BF16, "cpu", poison=True, generator=gen)
    q = torch.randn(30, 8, 64, generator=gen).to(BF16)
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=_hopper_table(64, 2))
    plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    want, _ = reference_paged_attention(q, kv.k_cache, kv.v_cache, kv.page_table,
                                        plan.q_indptr, plan.kv_lens, sm_scale=0.125)
    for call in range(2):
        out = torch.full_like(q, float("nan"))
        args = PrefillArgs(q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr,
                           plan.kv_lens, plan.work, out, sm_scale=0.125, enable_pdl=False,
                           launch=plan.launch)
        assert hopper_prefill_fits(args) == (call == 0)  # after the failure: never again
        if call == 0:
            with pytest.warns(RuntimeWarning, match="does not build with Triton"):
                attention_launch.launch_prefill(args)
        else:
            attention_launch.launch_prefill(args)
        torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert len(tried) == 1 and "has been removed" in prefill_hopper.unavailable


def test_only_a_configurations_first_launch_is_guarded(monkeypatch):
    """Once a configuration has launched, a later failure is the caller's to see (a CUDA
    error must not turn into a silent switch of kernels)."""
    from fuseinfer.ops.attention import prefill_hopper

    monkeypatch.setattr(prefill_hopper, "unavailable", None)
    monkeypatch.setattr(prefill_hopper, "_launched", set())
    outcomes = iter([None, RuntimeError("an illegal memory access was encountered")])

    def launch(a):
        err = next(outcomes)
        if err is not None:
            raise err

    monkeypatch.setattr(prefill_hopper, "_launch", launch)
    kv = make_paged_kv([70], 2, 64, 16, BF16, "cpu")
    q = torch.randn(30, 8, 64).to(BF16)
    attn = PagedAttention(AttentionShape(8, 2, 64, 16), "cpu", table=_hopper_table(64, 2))
    plan = attn.plan_prefill([30], [70], kv.page_table)
    args = PrefillArgs(q, kv.k_cache, kv.v_cache, kv.page_table, plan.q_indptr, plan.kv_lens,
                       plan.work, torch.empty_like(q), launch=plan.launch)
    assert prefill_hopper.launch_prefill_hopper(args)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        prefill_hopper.launch_prefill_hopper(args)
    assert prefill_hopper.unavailable is None
