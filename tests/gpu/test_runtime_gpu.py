"""The reference runtime on the GPU (bf16, Triton attention, CUDA kernels, CUDA graphs)
against transformers (bf16) on the same tiny random checkpoint saved to disk: prefill
logits within bf16 tolerance and greedy tokens token for token over 32 new tokens, for
Qwen3 and Llama; radix-cache hits, chunked prefill and eager decode give the same tokens.
The checkpoint is trained on a copy task so its greedy path has no near-ties."""

from __future__ import annotations

import pytest
import torch
import transformers
from scheduler_steps import record_step, run_launches_without_syncs
from tiny_checkpoint import (
    COMMON,
    greedy_with_gap,
    save_tiny_checkpoint,
    tiny_model,
    train_copy_task,
)

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.sampling import SamplingParams

NEW = 32
KV_TOKENS = 8192  # small pools: the engines of a module coexist


# Random weights make near-flat distributions: two bf16 implementations that round in
# different places flip greedy choices wherever the top two logits nearly tie (both are
# right then). So the checkpoint is trained to copy the token OFFSET positions back: only
# attention over the (paged, radix-shared) KV cache can do that, and the trained model
# is confident. The fixture checks that every greedy step's float32 top-two gap is at
# least MARGIN, far above the ~0.3 by which bf16 logits differ, so the tokens are defined.
OFFSET = 24
MARGIN = 2.0


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def case(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    model, loss = train_copy_task(tiny_model(request.param, tie=False), OFFSET, device="cuda")
    assert loss < 0.05, f"the copy task did not train (loss {loss:.3f})"
    save_tiny_checkpoint(path, request.param, model=model)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
    hf = hf.cuda().eval()
    hf32 = model.cuda()
    gen = torch.Generator().manual_seed(7)
    vocab = COMMON["vocab_size"]
    shared = torch.randint(0, vocab, (40,), generator=gen).tolist()
    prompts = [shared + torch.randint(0, vocab, (n,), generator=gen).tolist()
               for n in (1, 9, 30)] + [torch.randint(0, vocab, (n,), generator=gen).tolist()
                                       for n in (OFFSET + 1, 77)]
    want, logits = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device="cuda")
            logits.append(hf(ids).logits[0, -1].float())
            want.append(greedy_with_gap(hf, p, NEW)[0])
            exact, gap = greedy_with_gap(hf32, p, NEW)
            assert gap >= MARGIN and exact == want[-1], (gap, exact, want[-1])
    return path, prompts, want, logits


PARAMS = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)


def test_prefill_logits_within_bf16_tolerance(case):
    path, prompts, _, want = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", disable_cuda_graph=True,
                               max_total_tokens=KV_TOKENS))
    for p, ref in zip(prompts, want, strict=True):
        req = engine.add_request(p, SamplingParams(max_new_tokens=1))
        batch = engine.scheduler.schedule()
        got = engine.runner.logits(engine.inputs_for(batch))[0].float()
        record_step(engine.scheduler, batch, [int(got.argmax())])
        assert req.finished
        scale = ref.abs().max()
        torch.testing.assert_close(got, ref, rtol=0.0, atol=3e-2 * float(scale))


@pytest.mark.parametrize("args", [
    dict(),
    dict(disable_cuda_graph=True),
    dict(disable_radix_cache=True, chunked_prefill_size=16, max_prefill_tokens=48),
    dict(page_size=1, schedule_policy="lpm"),
    dict(disable_fused_rope_kv=True, disable_fused_add_rmsnorm=True, disable_pdl=True,
         disable_fused_qk_norm=True, disable_fused_silu_mul=True,
         disable_small_batch_gemv=True, disable_fused_greedy_sample=True),
    dict(disable_gemv_silu_mul=True, fused_decode_merge="on"),
    # FP8 KV with calibrated per-head scales: written by qk_rmsnorm_rope (Qwen3) or the
    # CUDA RoPE kernel's fused write (Llama), then by store_kv_cache after RoPE alone
    dict(kv_cache_dtype="fp8_e4m3"),
    dict(kv_cache_dtype="fp8_e4m3", disable_fused_rope_kv=True, fused_decode_merge="on"),
])
def test_greedy_tokens_match_transformers(case, args):
    path, prompts, want, _ = case
    # page 16 unless the case says otherwise: the 40-token shared prefix fills 2 pages
    engine = Engine(EngineArgs(model=str(path), device="cuda", cuda_graph_max_bs=8,
                               max_total_tokens=KV_TOKENS, **({"page_size": 16} | args)))
    outs = engine.generate(prompts, PARAMS)
    assert [o.output for o in outs] == want
    again = engine.generate(prompts, PARAMS)  # radix hits (when enabled)
    assert [o.output for o in again] == want


@pytest.mark.parametrize("graphs", [True, False])
def test_launching_a_step_never_waits_for_the_gpu(case, graphs):
    """Forward and sampling of prefill and decode steps queue work without a host sync
    (a sync would stall the CPU behind the step in flight and undo overlap scheduling)."""
    path, prompts, want, _ = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", cuda_graph_max_bs=8,
                               max_total_tokens=KV_TOKENS, disable_cuda_graph=not graphs))
    engine.generate(prompts[:2], PARAMS)  # warm-up: compiles kernels, fills pinned pools
    reqs = [engine.add_request(p, PARAMS) for p in prompts]
    reqs.append(engine.add_request(prompts[0], SamplingParams(
        max_new_tokens=NEW, temperature=0.8, top_p=0.9, seed=3, logprobs=2)))
    run_launches_without_syncs(engine)
    assert [r.output for r in reqs[:-1]] == want
    assert len(reqs[-1].output) == NEW and len(reqs[-1].logprobs) == NEW


def test_overlapped_deltas_and_closing_frees_device_memory(case):
    """The overlapped loop on the GPU reports real tokens only, its deltas add up to the
    outputs, and closing the engine gives its device memory back (weights, KV cache,
    graphs)."""
    import gc

    path, prompts, want, _ = case
    gc.collect()  # engines of earlier tests
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    with Engine(EngineArgs(model=str(path), device="cuda", cuda_graph_max_bs=8,
                           max_total_tokens=KV_TOKENS)) as engine:
        reqs = [engine.add_request(p, PARAMS) for p in prompts]
        got: dict[int, list[int]] = {r.rid: [] for r in reqs}
        while engine.busy:
            for d in engine.step():
                assert min(d.new_tokens) >= 0
                got[d.rid] += d.new_tokens
            assert all(t >= 0 for r in reqs for t in r.output)
        assert [got[r.rid] for r in reqs] == [r.output for r in reqs] == want
        assert torch.cuda.memory_allocated() > before
    torch.cuda.synchronize()
    assert torch.cuda.memory_allocated() - before < 4 << 20
