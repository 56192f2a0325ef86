"""Qwen3-MoE on the GPU (bf16, topk_softmax and fused_moe Triton kernels, CUDA graphs)
against transformers (bf16) on the same tiny checkpoint saved to disk (3 layers, layer 1
dense, 8 experts, 2 per token): prefill logits within bf16 tolerance and greedy tokens
token for token over 32 new tokens, with and without CUDA graphs, chunked prefill and
every fusion off; FP8 experts against their dequantized twin; and the bundled
Qwen3-30B-A3B with dummy weights, built without a second copy of its experts, generating
on one GPU.

As in test_runtime_gpu.py, the checkpoint is trained on a copy task so its greedy path has
wide logit gaps (MARGIN, checked in float32) that bf16 rounding cannot flip. A token
whose k-th and (k+1)-th experts nearly tie may be routed differently by two bf16
implementations; the router starts at 5x transformers' scale so such ties are rare, and
the margin absorbs the rest (a misrouted token in every layer would not fit in it).
"""

from __future__ import annotations

import pytest
import torch
import transformers
from scheduler_steps import record_step
from tiny_checkpoint import COMMON, greedy_with_gap, tiny_moe_model, train_copy_task

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.sampling import SamplingParams

NEW = 32
KV_TOKENS = 8192
OFFSET = 24
MARGIN = 2.0
# bf16 against bf16, as the dense GPU test: 3% of the largest |logit|
LOGIT_ATOL = 3e-2
PARAMS = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3_moe")
    model, loss = train_copy_task(tiny_moe_model(router_scale=5.0), OFFSET, device="cuda")
    assert loss < 0.05, f"the copy task did not train (loss {loss:.3f})"
    model.save_pretrained(path, safe_serialization=True)
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
            logits.append(hf(torch.tensor([p], device="cuda")).logits[0, -1].float())
            want.append(greedy_with_gap(hf, p, NEW)[0])
            exact, gap = greedy_with_gap(hf32, p, NEW)
            assert gap >= MARGIN and exact == want[-1], (gap, exact, want[-1])
    return path, prompts, want, logits


def test_prefill_logits_within_bf16_tolerance(case):
    path, prompts, _, want = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", disable_cuda_graph=True,
                               max_total_tokens=KV_TOKENS))
    assert engine.runner.config.arch == "qwen3_moe"
    for p, ref in zip(prompts, want, strict=True):
        engine.add_request(p, SamplingParams(max_new_tokens=1))
        batch = engine.scheduler.schedule()
        got = engine.runner.logits(engine.inputs_for(batch))[0].float()
        record_step(engine.scheduler, batch, [int(got.argmax())])
        torch.testing.assert_close(got, ref, rtol=0.0, atol=LOGIT_ATOL * float(ref.abs().max()))


@pytest.mark.parametrize("args", [
    dict(),
    dict(disable_cuda_graph=True),
    dict(disable_radix_cache=True, chunked_prefill_size=16, max_prefill_tokens=48),
    dict(disable_fused_rope_kv=True, disable_fused_add_rmsnorm=True, disable_pdl=True,
         disable_fused_qk_norm=True, disable_fused_silu_mul=True,
         disable_small_batch_gemv=True),
])
def test_greedy_tokens_match_transformers(case, args):
    path, prompts, want, _ = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", cuda_graph_max_bs=8,
                               max_total_tokens=KV_TOKENS, **({"page_size": 16} | args)))
    assert [o.output for o in engine.generate(prompts, PARAMS)] == want
    assert [o.output for o in engine.generate(prompts, PARAMS)] == want  # radix hits


def test_dummy_qwen3_30b_a3b_fits_without_a_second_copy():
    """The dummy weights' peak memory is the weights plus the dense parts' fusion copies
    (a few GB), never twice the ~58 GB of experts; then the engine generates with them."""
    import gc

    from fuseinfer.models.bundled import resolve_model
    from fuseinfer.models.config import ModelConfig
    from fuseinfer.models.loader import dummy_weights

    cfg = ModelConfig.from_folder(resolve_model("qwen3-30b-a3b"))
    gc.collect()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    w = dummy_weights(cfg, torch.bfloat16, "cuda")
    held = torch.cuda.memory_allocated() - base
    peak = torch.cuda.max_memory_allocated() - base
    assert 55e9 < held < 65e9, held
    assert peak < held + 8e9, (peak, held)
    experts = w.layers[0].moe
    assert experts is not None and experts.w13.shape == (128, 1536, 2048)
    assert 0.015 < float(experts.w13[0].float().std()) < 0.025
    del w, experts
    gc.collect()
    torch.cuda.empty_cache()
    with Engine(EngineArgs(model="qwen3-30b-a3b", load_format="dummy", device="cuda",
                           max_total_tokens=KV_TOKENS, cuda_graph_max_bs=4)) as engine:
        outs = engine.generate([[1, 2, 3, 4], list(range(100, 400))],
                               SamplingParams(max_new_tokens=8, ignore_eos=True))
        assert [len(o.output) for o in outs] == [8, 8]
        assert all(0 <= t < 151936 for o in outs for t in o.output)


# FP8 experts (and FP8 attention / dense linears) on the GPU against the dequantized twin
# in float32 on the CPU: activation quantization costs 5-9% on the CPU
# (test_models_moe_cpu.py) and bf16 adds its rounding, so 15%.
FP8_REL_TOL = 0.15


def test_fp8_experts_against_the_dequantized_twin(tmp_path):
    from test_models_moe_cpu import Runner, _save_fp8_moe  # tests/ is on sys.path

    root = _save_fp8_moe(tmp_path)
    engine = Engine(EngineArgs(model=str(root / "fp8"), device="cuda",
                               disable_cuda_graph=True, max_total_tokens=KV_TOKENS))
    moe = engine.runner.model.weights.layers[0].moe
    assert moe is not None and moe.w13.dtype == torch.float8_e4m3fn
    gen = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, COMMON["vocab_size"], (n,), generator=gen).tolist()
               for n in (11, 40, 90)]
    for p in prompts:
        ref = Runner(root / "deq").step(p, 0)
        engine.add_request(p, SamplingParams(max_new_tokens=1))
        batch = engine.scheduler.schedule()
        got = engine.runner.logits(engine.inputs_for(batch))[0].float().cpu()
        record_step(engine.scheduler, batch, [int(got.argmax())])
        assert float((got - ref).norm() / ref.norm()) < FP8_REL_TOL
    with Engine(EngineArgs(model=str(root / "fp8"), device="cuda", cuda_graph_max_bs=4,
                           max_total_tokens=KV_TOKENS)) as graphs:
        outs = graphs.generate(prompts, SamplingParams(max_new_tokens=8, ignore_eos=True))
        assert [len(o.output) for o in outs] == [8, 8, 8]
