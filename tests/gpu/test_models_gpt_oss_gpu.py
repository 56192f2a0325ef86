"""GPT-OSS on the GPU (bf16; sinks and sliding windows in the paged attention kernels,
topk_softmax, fused_moe's clamped SwiGLU with biases, MXFP4 experts on the W4A16 Triton
GEMM, CUDA graphs) against transformers (bf16, eager attention) on the tiny checkpoint of
test_models_gpt_oss_cpu.py with a 16-token window, trained on a copy task (offset 24,
past the window) so its greedy path has wide logit gaps (MARGIN, checked in float32).
Its experts are then stored as MXFP4 (transformers holds the dequantized values): greedy
tokens match with the MXFP4 kernel and with the experts dequantized at load, with and
without CUDA graphs, with chunked prefill and radix hits, and with every fusion off;
prompts run past the window. The bundled GPT-OSS-20B with dummy MXFP4 weights generates.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from test_models_gpt_oss_cpu import save_mxfp4_twin, tiny_gpt_oss  # tests/ is on sys.path
from tiny_checkpoint import greedy_with_gap, train_copy_task

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.sampling import SamplingParams

NEW = 24
KV_TOKENS = 8192
OFFSET = 24
MARGIN = 2.0
PARAMS = SamplingParams(max_new_tokens=NEW, temperature=0.0, ignore_eos=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt_oss")
    model = tiny_gpt_oss(seed=0, gate_up_std=0.02, sliding_window=16)
    model, loss = train_copy_task(model, OFFSET, device="cuda")
    assert loss < 0.05, f"the copy task did not train (loss {loss:.3f})"
    save_mxfp4_twin(model, root)  # model now holds the MXFP4 experts' values
    hf = transformers.AutoModelForCausalLM.from_pretrained(root / "hf", dtype=torch.bfloat16,
                                                           attn_implementation="eager")
    hf = hf.cuda().eval()
    hf32 = model.cuda().eval()
    gen = torch.Generator().manual_seed(7)
    vocab = model.config.vocab_size
    shared = torch.randint(0, vocab, (40,), generator=gen).tolist()
    prompts = [shared + torch.randint(0, vocab, (n,), generator=gen).tolist()
               for n in (1, 9, 30)] + [torch.randint(0, vocab, (n,), generator=gen).tolist()
                                       for n in (OFFSET + 1, 77)]
    want = []
    with torch.no_grad():
        for p in prompts:
            want.append(greedy_with_gap(hf, p, NEW)[0])
            exact, gap = greedy_with_gap(hf32, p, NEW)
            assert gap >= MARGIN and exact == want[-1], (gap, exact, want[-1])
    return root / "mx", prompts, want


@pytest.mark.parametrize("args", [
    dict(),
    dict(moe_weight_dtype="bf16"),
    dict(disable_cuda_graph=True),
    dict(disable_radix_cache=True, chunked_prefill_size=16, max_prefill_tokens=48),
    dict(disable_fused_rope_kv=True, disable_fused_add_rmsnorm=True, disable_pdl=True,
         disable_fused_silu_mul=True, disable_small_batch_gemv=True),
])
def test_greedy_tokens_match_transformers(case, args):
    path, prompts, want = case
    engine = Engine(EngineArgs(model=str(path), device="cuda", cuda_graph_max_bs=8,
                               max_total_tokens=KV_TOKENS, **({"page_size": 16} | args)))
    moe = engine.runner.model.weights.layers[0].moe
    assert moe is not None
    assert moe.w13.dtype == (torch.bfloat16 if args.get("moe_weight_dtype") else torch.uint8)
    assert [o.output for o in engine.generate(prompts, PARAMS)] == want
    assert [o.output for o in engine.generate(prompts, PARAMS)] == want  # radix hits


def test_dummy_gpt_oss_20b_generates():
    with Engine(EngineArgs(model="gpt-oss-20b", load_format="dummy", device="cuda",
                           max_total_tokens=KV_TOKENS, cuda_graph_max_bs=4)) as engine:
        moe = engine.runner.model.weights.layers[0].moe
        assert moe is not None and moe.w13.dtype == torch.uint8
        assert moe.w13.shape == (32, 5760, 1440)
        outs = engine.generate([[1, 2, 3, 4], list(range(100, 400))],
                               SamplingParams(max_new_tokens=8, ignore_eos=True))
        assert [len(o.output) for o in outs] == [8, 8]
        assert all(0 <= t < 201088 for o in outs for t in o.output)
