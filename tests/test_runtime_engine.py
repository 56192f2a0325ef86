"""The engine end to end on the CPU with a tiny random checkpoint: batched greedy
generation matches transformers token for token, with the radix cache on and off,
chunked prefill, page size 1, and a KV budget small enough to force retraction."""

from __future__ import annotations

import pytest
import torch
import transformers
from tiny_checkpoint import COMMON, save_tiny_checkpoint  # tests/ is on sys.path

from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.sampling import SamplingParams
from fuseinfer.runtime.step_output import FinishReason


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen3")
    hf = save_tiny_checkpoint(path, "qwen3")
    gen = torch.Generator().manual_seed(5)
    shared = torch.randint(0, COMMON["vocab_size"], (9,), generator=gen).tolist()
    prompts = [shared + torch.randint(0, COMMON["vocab_size"], (n,), generator=gen).tolist()
               for n in (1, 6, 14, 3)] + [torch.randint(0, 384, (21,), generator=gen).tolist()]
    want = []
    with torch.no_grad():
        for p in prompts:
            out = hf.generate(torch.tensor([p]), max_new_tokens=10, min_new_tokens=10,
                              do_sample=False)
            want.append(out[0, len(p):].tolist())
    return path, prompts, want


@pytest.mark.parametrize("args", [
    dict(page_size=4),
    dict(page_size=4, disable_radix_cache=True, chunked_prefill_size=5, max_prefill_tokens=8),
    dict(page_size=1, schedule_policy="lpm"),
    dict(page_size=4, max_total_tokens=36),  # 9 pages for 5 requests of up to 31 tokens
    dict(page_size=4, disable_gemv_silu_mul=True),
    dict(page_size=4, residual_epilogue=True),
    dict(page_size=4, residual_epilogue=True, disable_small_batch_gemv=True,
         disable_fused_silu_mul=True, chunked_prefill_size=5, max_prefill_tokens=8),
    dict(page_size=4, disable_fused_rope_kv=True, disable_fused_add_rmsnorm=True,
         disable_fused_qk_norm=True, disable_fused_silu_mul=True,
         disable_small_batch_gemv=True, disable_fused_greedy_sample=True),
])
def test_engine_matches_transformers(checkpoint, args):
    path, prompts, want = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", **args))
    params = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    outs = engine.generate(prompts, params)
    assert [o.output for o in outs] == want
    assert all(o.finish_reason is FinishReason.LENGTH for o in outs)
    # a second round reuses cached prefixes (when enabled) and gives the same tokens
    again = engine.generate(prompts, params)
    assert [o.output for o in again] == want


def test_engine_retracts_under_a_tiny_budget(checkpoint):
    path, prompts, want = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4,
                               max_total_tokens=36))
    params = SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)
    reqs = [engine.add_request(p, params) for p in prompts]
    while engine.busy:
        engine.step()
    assert sum(r.retractions for r in reqs) > 0
    assert [r.output for r in reqs] == want


def test_engine_rejects_and_samples(checkpoint):
    path, prompts, _ = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4,
                               max_context_len=32))
    outs = engine.generate([prompts[0], list(range(30))],
                           [SamplingParams(max_new_tokens=4, temperature=0.8, seed=3,
                                           ignore_eos=True),
                            SamplingParams(max_new_tokens=8)])
    assert len(outs[0].output) == 4 and outs[1].finish_reason is FinishReason.REJECTED
    assert outs[1].finish_detail == ("prompt (30) + max_new_tokens (8) exceeds the context "
                                     "limit 32") and outs[1].output == []
    again = engine.generate([prompts[0]], SamplingParams(max_new_tokens=4, temperature=0.8,
                                                         seed=3, ignore_eos=True))
    assert again[0].output == outs[0].output  # seeded sampling is reproducible


def test_engine_freezes_gc_after_warmup_and_detaches_its_hook(checkpoint):
    import gc

    path, prompts, _ = checkpoint
    gc.unfreeze()
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4, gc_freeze=True,
                               gc_warning_threshold_secs=0.05))
    hook = engine.gc_monitor._callback
    assert hook in gc.callbacks
    engine.generate(prompts[:1], SamplingParams(max_new_tokens=2))
    assert gc.get_freeze_count() > 0
    gc.unfreeze()
    del engine
    gc.collect()
    assert hook not in gc.callbacks


def test_graph_batch_sizes():
    from fuseinfer.runtime.cuda_graph_runner import graph_batch_sizes

    assert graph_batch_sizes(1) == [1]
    assert graph_batch_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert graph_batch_sizes(32) == [1, 2, 4, 8, 16, 24, 32]


@pytest.mark.parametrize("budget", [None, 36])
def test_overlap_schedule_gives_the_same_results(checkpoint, budget):
    """Overlap runs one step ahead on placeholder tokens; stops (a stop token mid-stream,
    max_new_tokens), seeded sampling and retraction must come out the same as without."""
    path, prompts, want = checkpoint
    stop = want[0][3]
    params = [SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(stop,)),
              SamplingParams(max_new_tokens=3, temperature=0.0, ignore_eos=True),
              SamplingParams(max_new_tokens=10, temperature=0.7, seed=11, ignore_eos=True),
              SamplingParams(max_new_tokens=1, temperature=0.0, ignore_eos=True),
              SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)]
    results = {}
    for overlap in (True, False):
        engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4,
                                   max_total_tokens=budget,
                                   disable_overlap_schedule=not overlap))
        outs = engine.generate(prompts, params)
        results[overlap] = [(o.output, o.finish_reason) for o in outs]
        assert engine.allocator.available + engine.cache.cached_pages \
            == engine.allocator.capacity
    assert results[True] == results[False]
    first, reason = results[True][0]
    assert reason is FinishReason.STOP and first[-1] == stop and len(first) <= 4
    assert [len(o) for o, _ in results[True][1:4]] == [3, 10, 1]
    assert results[True][4][0] == want[4]


def test_logprobs_match_transformers(checkpoint):
    path, prompts, want = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4))
    out = engine.add_request(prompts[1], SamplingParams(
        max_new_tokens=5, temperature=0.0, ignore_eos=True, logprobs=3))
    plain = engine.add_request(prompts[2], SamplingParams(max_new_tokens=5, ignore_eos=True))
    while engine.busy:
        engine.step()
    assert out.output == want[1][:5] and len(out.logprobs) == 5 and plain.logprobs == []
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    with torch.no_grad():
        logits = hf(torch.tensor([prompts[1] + out.output])).logits[0]
    lp = logits.log_softmax(-1)[len(prompts[1]) - 1:-1]  # the distributions sampled from
    for step, (chosen, top) in enumerate(out.logprobs):
        assert abs(chosen - lp[step, out.output[step]].item()) < 1e-4
        assert [t for t, _ in top] == lp[step].topk(3).indices.tolist()
        assert top[0][0] == out.output[step]  # greedy: the top token is the one chosen


@pytest.mark.parametrize("budget", [None, 36])
def test_deltas_carry_real_tokens_only_and_add_up_to_the_output(checkpoint, budget):
    """An overlapped generation with stop tokens, sampling and logprobs (and, with the
    small budget, retraction): no placeholder ever shows in a request's output or in a
    delta, a request's deltas concatenate to its output, and only its last one finishes."""
    path, prompts, want = checkpoint
    params = [SamplingParams(max_new_tokens=10, temperature=0.0, stop_token_ids=(w[2],),
                             logprobs=2) for w in want[:3]]
    params += [SamplingParams(max_new_tokens=7, temperature=0.9, seed=5, ignore_eos=True),
               SamplingParams(max_new_tokens=10, temperature=0.0, ignore_eos=True)]
    with Engine(EngineArgs(model=str(path), device="cpu", page_size=4,
                           max_total_tokens=budget)) as engine:
        reqs = [engine.add_request(p, sp) for p, sp in zip(prompts, params, strict=True)]
        got: dict[int, list] = {r.rid: [] for r in reqs}
        while engine.busy:
            for d in engine.step():
                assert all(t >= 0 for t in d.new_tokens) and d.new_tokens
                assert not got[d.rid] or not got[d.rid][-1].finished
                got[d.rid].append(d)
            for r in reqs:
                assert all(t >= 0 for t in r.output)
                assert len(r.logprobs) == (len(r.output) if r.params.logprobs else 0)
    for r, w in zip(reqs, want, strict=True):
        deltas = got[r.rid]
        assert [t for d in deltas for t in d.new_tokens] == r.output
        assert [e for d in deltas for e in d.new_logprobs] == r.logprobs
        assert deltas[-1].finish_reason is r.finish_reason is not None
        if r.params.stop_token_ids:
            stop = r.params.stop_token_ids[0]
            assert r.output == w[:w.index(stop) + 1]
            assert r.finish_reason is FinishReason.STOP
    assert reqs[4].output == want[4] and len(reqs[3].output) == 7


def test_abort_and_stats(checkpoint):
    path, prompts, _ = checkpoint
    engine = Engine(EngineArgs(model=str(path), device="cpu", page_size=4))
    reqs = [engine.add_request(p, SamplingParams(max_new_tokens=50, ignore_eos=True))
            for p in prompts]
    assert engine.stats().waiting == len(prompts) and engine.stats().kv_usage == 0.0
    engine.step()
    engine.step()
    stats = engine.stats()
    assert stats.running == len(prompts) and stats.waiting == 0 and stats.kv_usage > 0
    engine.abort(reqs[0])
    assert reqs[0].finish_reason is FinishReason.ABORT
    deltas = engine.step()  # the aborted request's token in flight is dropped
    assert reqs[0].rid not in {d.rid for d in deltas} and all(t >= 0 for t in reqs[0].output)
    assert engine.max_context == 256  # the checkpoint's max_position_embeddings
    for r in reqs[1:]:
        engine.abort(r)
    vocab = engine.config.vocab_size
    for bad in ([vocab], [-1, 2], [3, 2**70]):  # outside the vocabulary: refused up front
        rejected = engine.add_request(bad, SamplingParams(max_new_tokens=2))
        assert rejected.finish_reason is FinishReason.REJECTED
        assert "outside the vocabulary" in rejected.finish_detail
    while engine.busy:
        assert engine.step() == []
    # aborted requests give every page back (nothing of theirs enters the radix cache)
    assert engine.stats() == type(stats)(0, 0, 0.0)


def test_closing_an_engine_releases_its_memory(checkpoint):
    import weakref

    path, prompts, _ = checkpoint
    with Engine(EngineArgs(model=str(path), device="cpu", page_size=4)) as engine:
        engine.generate(prompts[:2], SamplingParams(max_new_tokens=3))
        engine.add_request(prompts[2], SamplingParams(max_new_tokens=30))
        engine.step()
        runner = engine.runner
        held = [weakref.ref(t) for t in runner.kv_cache.k + runner.kv_cache.v
                + [runner.model.weights.embed, runner.req_pool.page_table]]
        del runner
    # freed by reference counting: a frozen heap (gc_freeze) would never collect a cycle
    assert all(ref() is None for ref in held)
    engine.close()  # twice is fine
    assert not engine.busy
    with pytest.raises(RuntimeError, match="closed"):
        engine.step()
    with pytest.raises(RuntimeError, match="closed"):
        engine.add_request(prompts[0], SamplingParams(max_new_tokens=3))
    with pytest.raises(RuntimeError, match="closed"):
        engine.stats()


def test_flush_prefix_cache_frees_the_cached_pages(checkpoint):
    """Finished requests leave their prefixes in the radix cache (KV usage counts them);
    flushing gives every page back, and is refused while a request runs."""
    path, prompts, _ = checkpoint
    with Engine(EngineArgs(model=str(path), device="cpu", page_size=4)) as engine:
        engine.generate(prompts[:2], SamplingParams(max_new_tokens=3))
        assert not engine.busy and engine.stats().kv_usage > 0
        engine.flush_prefix_cache()
        assert engine.stats().kv_usage == 0.0
        engine.add_request(prompts[2], SamplingParams(max_new_tokens=5))
        engine.step()
        with pytest.raises(RuntimeError, match="requests are running"):
            engine.flush_prefix_cache()
        while engine.busy:
            engine.step()
        assert engine.stats().kv_usage > 0  # the new prefix is cached again
