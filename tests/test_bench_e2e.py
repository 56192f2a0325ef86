"""The end-to-end benches (bench/e2e/): their engine options, what they measure (against a
scripted engine with a scripted clock), and `bench latency` on the tiny model (CPU)."""

from __future__ import annotations

import argparse
import random
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from test_cli import run_cli  # tests/ is on sys.path

from fuseinfer.bench.e2e import latency, offline
from fuseinfer.bench.e2e.variants import (
    ABLATIONS,
    FP8_ABLATIONS,
    TP_ABLATIONS,
    ablation_variants,
)
from fuseinfer.runtime.engine_args import SERVING_GC


class ScriptedEngine:
    """The Engine contract, scripted: every step adds one token to each unfinished request,
    `lag` steps after it was launched (1: overlap scheduling, a step's tokens come back in
    the next), and moves a clock by 1 ms. KV usage is the fraction of requests running."""

    def __init__(self, lag: int) -> None:
        self.config = SimpleNamespace(vocab_size=97)
        self.lag = lag
        self.now = 0.0
        self.reqs: list[SimpleNamespace] = []
        self.pending: list[list[SimpleNamespace]] = []
        self.usages: list[float] = []

    def add_request(self, prompt: list[int], params) -> SimpleNamespace:
        req = SimpleNamespace(rid=len(self.reqs), prompt=list(prompt), params=params,
                              output=[], launched=0, finished=False, finish_detail=None,
                              retractions=0)
        self.reqs.append(req)
        return req

    @property
    def busy(self) -> bool:
        return any(not r.finished for r in self.reqs)

    def step(self) -> list:
        self.now += 1e-3
        launch = [r for r in self.reqs if r.launched < r.params.max_new_tokens]
        for r in launch:
            r.launched += 1
        self.pending.append(launch)
        if len(self.pending) <= self.lag:
            return []
        deltas = []
        for r in self.pending.pop(0):
            token = random.randrange(self.config.vocab_size)
            r.output.append(token)
            r.finished = len(r.output) == r.params.max_new_tokens
            deltas.append(SimpleNamespace(rid=r.rid, new_tokens=[token],
                                          finish_reason="length" if r.finished else None))
        return deltas

    def stats(self) -> SimpleNamespace:
        running = sum(not r.finished for r in self.reqs)
        self.usages.append(running / max(len(self.reqs), 1))
        return SimpleNamespace(waiting=0, running=running, kv_usage=self.usages[-1])


@pytest.mark.parametrize("lag", [0, 1])
def test_latency_clock_starts_at_the_first_real_token(lag, monkeypatch):
    engine = ScriptedEngine(lag)
    monkeypatch.setattr(latency, "time", SimpleNamespace(perf_counter=lambda: engine.now))
    ms = latency.decode_ms_per_token(engine, context=5, new_tokens=7, batch=3, seed=0)
    assert ms == pytest.approx(1.0)  # one step per token after the first, 1 ms each
    assert [len(r.output) for r in engine.reqs] == [8, 8, 8]
    assert all(len(r.prompt) == 5 for r in engine.reqs)


def test_latency_needs_a_decode_step(monkeypatch):
    engine = ScriptedEngine(0)
    with pytest.raises(SystemExit, match="--new-tokens too small"):
        latency.decode_ms_per_token(engine, context=5, new_tokens=0, batch=1, seed=0)


def test_offline_workload_counts_tokens_steps_peak_and_progress(monkeypatch, capsys):
    monkeypatch.delenv("FUSEINFER_QUIET", raising=False)
    engine = ScriptedEngine(1)
    work = offline.Workload(num_prompts=5, min_len=2, max_len=9, seed=3)
    res = offline.run_workload(engine, work)
    lengths = [n for _, n in work.requests(97)]
    assert res["requests"] == 5 and res["output_tokens"] == sum(lengths)
    assert res["input_tokens"] == sum(len(p) for p, _ in work.requests(97))
    assert res["steps"] == max(lengths) + 1  # the last tokens come back one step late
    assert res["peak_kv_usage"] == max(engine.usages) == 1.0
    progress = [line for line in capsys.readouterr().err.splitlines() if "requests done" in line]
    assert len(progress) == 5 and progress[-1].endswith("5/5 requests done")


def test_offline_refuses_a_rejected_request():
    engine = ScriptedEngine(0)
    add = engine.add_request

    def rejecting(prompt, params):
        req = add(prompt, params)
        req.finished, req.finish_detail = True, "prompt longer than the context"
        return req

    engine.add_request = rejecting
    with pytest.raises(SystemExit, match="5 requests rejected: prompt longer than"):
        offline.run_workload(engine, offline.Workload(num_prompts=5, min_len=2, max_len=4),
                             progress=False)


def _parse(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_offline_engine_args_come_from_the_engine_args_builder():
    args = offline.engine_args(_parse(offline, "--max-len", "50", "--disable-pdl",
                                      "--page-size", "16"), max_context_len=100)
    assert args.max_context_len == 100 and args.page_size == 16 and args.disable_pdl
    assert args.model.endswith("tiny") or "tiny" in args.model
    # the benches run like serve: frozen heap after warm-up, pause warnings on
    assert {k: getattr(args, k) for k in SERVING_GC} == SERVING_GC
    with pytest.raises(SystemExit, match="EngineArgs.page_size"):
        offline.engine_args(_parse(offline, "--page-size", "0"))
    with pytest.raises(SystemExit):  # argparse: not one of the choices
        _parse(offline, "--kv-cache-dtype", "fp8")


def test_latency_sizes_the_engine_from_its_own_options():
    ns = _parse(latency, "--batch", "12", "--context", "100", "--new-tokens", "20")
    for name in latency._SET_HERE:
        assert not hasattr(ns, name) or name == "model"
    _, variants = ablation_variants(offline.engine_args(ns, max_running_requests=12),
                                    ["pdl", "cuda-graph", "pdl"])
    assert [n for n, _ in variants] == ["as configured", "without pdl", "without cuda-graph"]
    assert variants[1][1].disable_pdl and not variants[0][1].disable_pdl
    assert variants[2][1].disable_cuda_graph and variants[2][1].max_running_requests == 12
    # `all` on a bf16 model leaves out the switches that only change an FP8 model, and the
    # opt-in switches, off until turned on (the fused decode merge's `auto` fuses nothing
    # without sliding layers, nor on the CPU; the sm_90a prefill runs only on an sm_90 GPU
    # whose table picks it)
    opt_in = ("fused-decode-merge", "residual-epilogue", "fp8-kv-cache", "hopper-prefill")
    names = [n for n, _ in ablation_variants(variants[0][1], ["all"])[1]]
    assert len(names) == 1 + len(ABLATIONS) - len(FP8_ABLATIONS) - len(TP_ABLATIONS) - \
        len(opt_in)
    assert not any(f"without {name}" in names for name in opt_in)
    merged = replace(variants[0][1], fused_decode_merge="on")
    opted = dict(ablation_variants(merged, ["all"])[1])
    assert opted["without fused-decode-merge"].fused_decode_merge == "off"
    assert opted["as configured"].fused_decode_merge == "on"
    fp8_kv = dict(ablation_variants(replace(variants[0][1], kv_cache_dtype="fp8_e4m3"),
                                    ["all"])[1])
    assert fp8_kv["as configured"].kv_cache_dtype == "fp8_e4m3"
    assert fp8_kv["without fp8-kv-cache"].kv_cache_dtype == "auto"
    assert not any(a in n for n in names for a in FP8_ABLATIONS)
    small_m_variants = dict(ablation_variants(variants[0][1], ["all"])[1])
    assert small_m_variants["without small-m-matmul"].small_m_matmul_tokens == 0
    assert small_m_variants["without pdl"].small_m_matmul_tokens == 64  # the default
    # a valued switch already off is left out of `all` (its ablation would change nothing)
    small_m_off = replace(variants[0][1], small_m_matmul_tokens=0)
    assert "without small-m-matmul" not in dict(ablation_variants(small_m_off, ["all"])[1])
    # ... and asked for by name, it is refused rather than timed against itself
    with pytest.raises(SystemExit, match="fused-decode-merge small-m-matmul: already off"):
        ablation_variants(small_m_off, ["pdl", "fused-decode-merge", "small-m-matmul"])
    fp8 = replace(variants[0][1], quantization="fp8")
    fp8_variants = ablation_variants(fp8, ["all"])[1]
    assert len(fp8_variants) == 1 + len(ABLATIONS) - len(TP_ABLATIONS) - len(opt_in)
    quant_off = dict(fp8_variants)["without fused-norm-quant"]
    assert quant_off.disable_fused_norm_quant and not quant_off.disable_fused_silu_mul_quant
    bundled = replace(variants[0][1], model="qwen3-8b-fp8")  # FP8 by its checkpoint config
    assert len(ablation_variants(bundled, ["all"])[1]) == \
        1 + len(ABLATIONS) - len(TP_ABLATIONS) - len(opt_in)
    # ... and the tensor-parallel switches only for an engine of several ranks
    tp_names = [n for n, _ in ablation_variants(replace(fp8, tp=2), ["all"])[1]]
    assert len(tp_names) == 1 + len(ABLATIONS) - len(opt_in)


def test_bench_latency_on_the_tiny_model(isolated_cache):
    proc = run_cli("bench", "latency", "--device", "cpu", "--page-size", "4", "--context",
                   "8", "--new-tokens", "4", "--repeats", "1", "--ablate", "overlap-schedule",
                   "--batch", "1", "3")
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if "ms/token" in line]
    assert len(lines) == 4 and all("as configured" in line for line in lines[:2])
    assert "decode batch 1," in lines[0] and "decode batch 3," in lines[1]
    assert all("without overlap-schedule" in line for line in lines[2:])
    assert "floor" not in proc.stdout  # no copy bandwidth off the GPU
    for batch in (1, 3):
        assert f"batch {batch}, overlap-schedule: " in proc.stdout
    assert "(with / without)" in proc.stdout


def test_decode_floor_counts_each_weight_once_and_the_kv_read():
    from types import SimpleNamespace

    from fuseinfer.bench.e2e.decode_floor import floor_ms, kv_bytes, weight_bytes
    from fuseinfer.models.decoder import LayerWeights, ModelWeights
    from fuseinfer.models.fp8_linear import Fp8Weight

    def t(*shape, dtype=torch.bfloat16):
        return torch.randn(*shape).to(dtype)

    embed = t(100, 8)
    layer = LayerWeights(input_norm=t(8), qkv=t(24, 8), q_norm=None, k_norm=None, o=t(8, 8),
                         post_norm=t(8), gate_up=Fp8Weight(t(32, 8, dtype=torch.float8_e4m3fn),
                                                           t(1, 1, dtype=torch.float32)),
                         down=t(8, 16))
    tied = ModelWeights(embed=embed, layers=[layer, layer], norm=t(8), lm_head=embed)
    per_layer = 2 * (8 + 24 * 8 + 64 + 8 + 8 * 16) + 32 * 8 + 4
    # the shared layer counted once, the tied lm_head (the embedding) once, embed lookups not
    assert weight_bytes(tied) == per_layer + 2 * 8 + 2 * 800
    untied = ModelWeights(embed=embed, layers=[layer], norm=t(8), lm_head=t(100, 8))
    assert weight_bytes(untied) == per_layer + 2 * 8 + 2 * 800
    config = SimpleNamespace(num_kv_heads=2, head_dim=4, num_layers=3,
                             window_left=lambda i: 9 if i == 1 else None)
    # layers 0 and 2 read the whole 100-token context, layer 1 its 10-token window
    assert kv_bytes(config, 2, batch=3, context=100) == 3 * (100 + 10 + 100) * 2 * 2 * 4 * 2
    assert floor_ms(4_000_000, 4000.0) == pytest.approx(0.001)
    assert floor_ms(None, 4000.0) is None and floor_ms(10, None) is None


def test_latency_floor_reads_copy_bandwidth_for_auto_and_cuda_devices(monkeypatch):
    """--device auto (the default) on a GPU machine gets its floors, cpu does not."""
    import torch as torch_module

    from fuseinfer.bench import ceilings

    monkeypatch.setattr(torch_module.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ceilings, "copy_bandwidth_gbps", lambda: 4321.0)
    assert latency._copy_gbps("auto") == 4321.0 and latency._copy_gbps("cuda:1") == 4321.0
    assert latency._copy_gbps("cpu") is None
    monkeypatch.setattr(torch_module.cuda, "is_available", lambda: False)
    assert latency._copy_gbps("auto") is None


def test_fused_merge_ablation_only_where_auto_fuses(monkeypatch):
    """`auto` fuses the decode merge on sliding layers where the GPU's table fuses at their
    window: only then does `--ablate fused-decode-merge` change the engine."""
    from fuseinfer.bench.e2e import variants
    from fuseinfer.ops.attention import dispatch
    from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN

    gpt_oss = {"architectures": ["GptOssForCausalLM"], "num_attention_heads": 8,
               "num_key_value_heads": 2, "head_dim": 64, "hidden_size": 256,
               "intermediate_size": 128, "num_hidden_layers": 2, "vocab_size": 100,
               "max_position_embeddings": 512, "num_local_experts": 4,
               "num_experts_per_tok": 2, "sliding_window": 128,
               "layer_types": ["sliding_attention", "full_attention"]}
    monkeypatch.setattr(variants, "_checkpoint_config", lambda base: dict(gpt_oss))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    fused_at = replace(ATTENTION_BUILTIN, fused_merge_window_pieces=4)
    monkeypatch.setattr(dispatch, "attention_table", lambda device=None: fused_at)
    base = offline.engine_args(_parse(offline), max_context_len=100)
    assert base.fused_decode_merge == "auto"
    names = [n for n, _ in ablation_variants(base, ["all"])[1]]
    assert "without fused-decode-merge" in names
    # a table that never fuses, or one whose bound the 128-token window exceeds
    for table in (ATTENTION_BUILTIN, replace(fused_at, fused_merge_window_pieces=2)):
        monkeypatch.setattr(dispatch, "attention_table", lambda device=None, t=table: t)
        with pytest.raises(SystemExit, match="auto fuses nothing"):
            ablation_variants(base, ["fused-decode-merge"])
    # the CPU (the reference runs) and a model without sliding layers fuse nothing;
    # `on` always fuses
    monkeypatch.setattr(dispatch, "attention_table", lambda device=None: fused_at)
    assert variants.fused_merge_runs(base)
    assert not variants.fused_merge_runs(replace(base, device="cpu"))
    gpt_oss["layer_types"] = ["full_attention"] * 2
    assert not variants.fused_merge_runs(base)
    assert variants.fused_merge_runs(replace(base, fused_decode_merge="on"))


def test_hopper_prefill_ablation_only_where_the_table_picks_that_kernel(monkeypatch):
    """`all` ablates the sm_90a prefill only on an sm_90 GPU whose attention table picks
    it at the model's head dim with a 16-bit cache; by name elsewhere it is refused."""
    from fuseinfer.ops.attention import dispatch
    from fuseinfer.ops.attention.dispatch import ATTENTION_BUILTIN, PrefillLaunchRule

    base = replace(offline.engine_args(_parse(offline)), device="auto")
    hopper = replace(ATTENTION_BUILTIN, prefill_rules=(
        PrefillLaunchRule(None, 128, 128, 8, 2, True, "hopper"),))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (9, 0))
    monkeypatch.setattr(dispatch, "attention_table", lambda *a: hopper)
    variants = dict(ablation_variants(base, ["all"])[1])
    assert variants["without hopper-prefill"].disable_hopper_prefill
    assert not variants["as configured"].disable_hopper_prefill
    fp8_kv = replace(base, kv_cache_dtype="fp8_e4m3")
    assert "without hopper-prefill" not in dict(ablation_variants(fp8_kv, ["all"])[1])
    monkeypatch.setattr(dispatch, "attention_table", lambda *a: ATTENTION_BUILTIN)
    with pytest.raises(SystemExit, match="hopper-prefill: already off"):
        ablation_variants(base, ["hopper-prefill"])
    monkeypatch.setattr(dispatch, "attention_table", lambda *a: hopper)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: (8, 0))
    assert "without hopper-prefill" not in dict(ablation_variants(base, ["all"])[1])
