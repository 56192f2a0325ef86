"""The offline API and `fuseinfer generate` on the bundled tiny model (CPU), the tiny model's
files, and incremental detokenization."""

from __future__ import annotations

import json
import random

import pytest
import torch
from test_cli import run_cli  # tests/ is on sys.path
from tiny_checkpoint import save_tiny_checkpoint

from fuseinfer import LLM, SamplingParams
from fuseinfer.models.tiny_model import tiny_model_path
from fuseinfer.runtime.tokenizer import IncrementalDetokenizer, TextTokenizer


def test_llm_generates_text_and_token_ids(isolated_cache):
    llm = LLM(device="cpu", page_size=4)
    params = SamplingParams(max_new_tokens=6, temperature=0.0, ignore_eos=True)
    first = llm.generate(["Hello, world!", "Paris"], params)
    assert [len(c.token_ids) for c in first] == [6, 6]
    assert first[0].prompt_token_ids == llm.tokenizer.encode("Hello, world!")
    assert first[0].text == llm.tokenizer.decode(first[0].token_ids)
    ids = llm.generate([first[0].prompt_token_ids], params)[0]
    assert ids.token_ids == first[0].token_ids  # same tokens from ids as from text
    sampled = llm.generate("Paris", SamplingParams(max_new_tokens=6, temperature=1.0, seed=4,
                                                   ignore_eos=True))
    again = llm.generate("Paris", SamplingParams(max_new_tokens=6, temperature=1.0, seed=4,
                                                 ignore_eos=True))
    assert sampled[0].token_ids == again[0].token_ids


def test_llm_leaves_the_garbage_collector_alone_unless_asked(isolated_cache):
    import gc

    gc.unfreeze()
    hooks = list(gc.callbacks)
    params = SamplingParams(max_new_tokens=3, ignore_eos=True)
    with LLM(device="cpu", page_size=4) as llm:
        llm.generate("Hello", params)
        assert gc.get_freeze_count() == 0 and gc.callbacks == hooks
    with LLM(device="cpu", page_size=4, gc_freeze=True, gc_warning_threshold_secs=0.05) as llm:
        llm.generate("Hello", params)
        assert gc.get_freeze_count() > 0 and len(gc.callbacks) == len(hooks) + 1
    assert gc.callbacks == hooks  # closing detaches the pause monitor
    gc.unfreeze()


def test_tiny_model_is_made_once(isolated_cache):
    path = tiny_model_path()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert {"config.json", "tokenizer.json"} <= {p.name for p in path.iterdir()}


def test_llm_errors(tmp_path, isolated_cache):
    with pytest.raises(FileNotFoundError, match="no such model folder"):
        LLM(tmp_path / "nowhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        LLM(tmp_path / "empty", device="cpu")
    save_tiny_checkpoint(tmp_path, "llama")  # weights and config, no tokenizer.json
    llm = LLM(tmp_path, device="cpu", page_size=4)
    with pytest.raises(ValueError, match="text prompts need"):
        llm.generate("hi")
    out = llm.generate([[1, 2, 3]], SamplingParams(max_new_tokens=2, ignore_eos=True))[0]
    assert out.text is None and len(out.token_ids) == 2


def test_incremental_detokenizer_handles_split_characters(isolated_cache):
    tok = TextTokenizer(tiny_model_path())
    text = "naïve 你好 fox"
    ids = tok.encode(text)
    assert len(ids) > len(text.split())  # multi-byte characters span several tokens
    detok = IncrementalDetokenizer(tok)
    pieces = [detok.add(i) for i in ids]
    assert "".join(pieces) == text and "\ufffd" not in "".join(pieces)


def test_incremental_detokenizer_gives_what_whole_decodes_give(isolated_cache):
    """It decodes only a window at the end of the stream; token by token, its text is the
    text of decoding the whole stream each time (holding back a trailing incomplete
    character), also for random ids, whose bytes are often not valid UTF-8."""
    tok = TextTokenizer(tiny_model_path())
    rng = random.Random(5)
    streams = [tok.encode("naïve 你好 🙂 fox " * 40)]
    streams += [[rng.randrange(tok.vocab_size) for _ in range(300)] for _ in range(4)]
    for ids in streams:
        detok, sent, expected = IncrementalDetokenizer(tok), 0, []
        for n in range(1, len(ids) + 1):
            text = tok.decode(ids[:n])
            if text.endswith("\ufffd"):
                expected.append("")
                continue
            expected.append(text[sent:])
            sent = len(text)
        assert [detok.add(t) for t in ids] == expected


def test_generate_cli(isolated_cache):
    proc = run_cli("generate", "--prompt", "Hello", "--max-new-tokens", "4", "--device", "cpu",
                   "--page-size", "4", "--ignore-eos")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Hello") and "[4 tokens, finish: length]" in proc.stdout
    bad = run_cli("generate", "--prompt", "x", "--temperature", "-1", "--device", "cpu")
    assert bad.returncode != 0 and "temperature must be >= 0" in bad.stderr
    # the engine options come from EngineArgs: its choices and ranges hold here too
    fp8 = run_cli("generate", "--prompt", "x", "--kv-cache-dtype", "fp8", "--device", "cpu")
    assert fp8.returncode != 0 and "fp8_e4m3" in fp8.stderr
    zero = run_cli("generate", "--prompt", "x", "--page-size", "0", "--device", "cpu")
    assert zero.returncode != 0 and "EngineArgs.page_size" in zero.stderr
    small = run_cli("generate", "--prompt", "Hello", "--max-new-tokens", "8", "--device", "cpu",
                    "--page-size", "4", "--max-context-len", "8", "--seed", "3")
    # a prompt the engine can never run is a usage error: one line, exit 2
    assert small.returncode == 2, small.stderr
    assert "exceeds the context limit 8" in small.stderr and "Traceback" not in small.stderr


def test_bench_offline_cli_with_ablation(isolated_cache, tmp_path):
    out = tmp_path / "offline.json"
    proc = run_cli("bench", "offline", "--num-prompts", "5", "--min-len", "3", "--max-len",
                   "9", "--device", "cpu", "--page-size", "4", "--ablate",
                   "fused-add-rmsnorm", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "as configured:" in proc.stdout and "without fused-add-rmsnorm:" in proc.stdout
    assert "(with / without)" in proc.stdout
    data = json.loads(out.read_text())
    for res in data["results"].values():
        assert res["requests"] == 5 and res["output_tok_per_s"] > 0
        assert 0 < res["peak_kv_usage"] <= 1


def test_offline_workload_survives_a_tiny_kv_budget(isolated_cache):
    from fuseinfer.bench.e2e.offline import Workload, run_workload
    from fuseinfer.runtime.engine import Engine, EngineArgs

    engine = Engine(EngineArgs(model=str(tiny_model_path()), device="cpu", page_size=4,
                               max_total_tokens=64, max_context_len=64))
    res = run_workload(engine, Workload(num_prompts=6, min_len=5, max_len=20), progress=False)
    assert res["retractions"] > 0 and res["requests"] == 6
    assert res["peak_kv_usage"] > 0.5


@pytest.mark.parametrize("name, layers, vocab", [("qwen3-0.6b", 28, 151936),
                                                 ("qwen3-8b", 36, 151936),
                                                 ("llama-3.1-8b", 32, 128256)])
def test_bundled_configs(name, layers, vocab):
    from fuseinfer.models.bundled import resolve_model
    from fuseinfer.models.config import ModelConfig

    cfg = ModelConfig.from_folder(resolve_model(name))
    assert (cfg.num_layers, cfg.vocab_size, cfg.head_dim) == (layers, vocab, 128)
    assert cfg.eos_token_ids and cfg.num_kv_heads == 8


def test_bundled_config_needs_dummy_weights_and_fp8_kv_runs(isolated_cache):
    from fuseinfer.runtime.engine import Engine, EngineArgs

    with pytest.raises(FileNotFoundError, match="load-format dummy"):
        Engine(EngineArgs(model="qwen3-0.6b", device="cpu"))
    with pytest.raises(FileNotFoundError, match="bundled names"):
        LLM("/nowhere/at/all", device="cpu")
    llm = LLM(device="cpu", page_size=4, kv_cache_dtype="fp8_e4m3")
    out = llm.generate("Hello", SamplingParams(max_new_tokens=5, ignore_eos=True))[0]
    assert len(out.token_ids) == 5 and llm.engine.runner.kv_cache.k[0].dtype == torch.float8_e4m3fn
    assert out.finish_reason == "length" and out.finish_detail is None
