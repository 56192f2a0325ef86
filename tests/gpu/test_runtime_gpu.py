"""The reference runtime on the GPU (bf16, Triton attention, CUDA kernels, CUDA graphs)
against transformers on the same tiny random checkpoint saved to disk: prefill logits
within bf16 tolerance and greedy tokens token for token over 32 new tokens, for Qwen3 and
Llama; radix-cache hits, chunked prefill and eager decode give the same tokens."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_checkpoint import COMMON, save_tiny_checkpoint

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.sampling import SamplingParams

NEW = 32


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def case(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    save_tiny_checkpoint(path, request.param, tie=False, lm_head_scale=30.0)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.bfloat16)
    hf = hf.cuda().eval()
    gen = torch.Generator().manual_seed(7)
    shared = torch.randint(0, COMMON["vocab_size"], (40,), generator=gen).tolist()
    prompts = [shared + torch.randint(0, COMMON["vocab_size"], (n,), generator=gen).tolist()
               for n in (1, 9, 30)] + [torch.randint(0, 384, (n,), generator=gen).tolist()
                                       for n in (3, 77)]
    want, logits = [], []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p], device="cuda")
            logits.append(hf(ids).logits[0, -1].float())
            out = hf.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False)
            want.append(out[0, len(p):].tolist())
    return path, prompts, want, logits


PARAMS = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)


def test_prefill_logits_within_bf16_tolerance(case):
    path, prompts, _, want = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", disable_cuda_graph=True))
    for p, ref in zip(prompts, want, strict=True):
        req = engine.scheduler.new_request(p, SamplingParams(max_new_tokens=1))
        batch = engine.scheduler.schedule()
        got = engine._logits(batch)[0]
        engine.scheduler.process(batch, [int(got.argmax())])
        assert req.finished
        scale = ref.abs().max()
        torch.testing.assert_close(got, ref, rtol=0.0, atol=3e-2 * float(scale))


@pytest.mark.parametrize("args", [
    dict(),
    dict(disable_cuda_graph=True),
    dict(disable_radix_cache=True, chunked_prefill_size=16, max_prefill_tokens=48),
    dict(page_size=1, schedule_policy="lpm"),
    dict(disable_fused_rope_kv=True, disable_fused_add_rmsnorm=True, disable_pdl=True),
])
def test_greedy_tokens_match_transformers(case, args):
    path, prompts, want, _ = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", cuda_graph_max_bs=8, **args))
    outs = engine.generate(prompts, PARAMS)
    assert [o.output for o in outs] == want
    again = engine.generate(prompts, PARAMS)  # radix hits (when enabled)
    assert [o.output for o in again] == want
