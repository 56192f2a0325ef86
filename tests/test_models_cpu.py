"""Llama and Qwen3 built from fuseinfer ops, on the CPU in float32, against Hugging Face
transformers on the same tiny random checkpoint saved to disk: prefill logits, and greedy
tokens over decode steps that read the paged KV cache; every fusion switch gives the
same result."""

from __future__ import annotations

import pytest
import torch
from tiny_checkpoint import COMMON, save_tiny_checkpoint  # tests/ is on sys.path

from fuseinfer.distributed.parallel_state import SINGLE_RANK, ParallelState
from fuseinfer.models.config import ModelConfig
from fuseinfer.models.decoder import DecoderModel, ForwardBatch, Fusions
from fuseinfer.models.kv_cache import KvCacheConfig, PagedKvCache
from fuseinfer.models.loader import dummy_weights, load_weights
from fuseinfer.models.tensor_parallel import local_config
from fuseinfer.ops import AttentionShape, PagedAttention
from fuseinfer.runtime.kv_pool import PageAllocator, ReqToTokenPool

PAGE = 4


class Runner:
    """Drives one request through prefill and decode steps on the paged cache."""

    def __init__(self, folder, fusions: Fusions | None = None,
                 parallel: ParallelState = SINGLE_RANK):
        """parallel: run this rank's shard of the model (the whole of it on one rank),
        loaded per shard as the model runner does."""
        full = ModelConfig.from_folder(folder)
        self.config = local_config(full, parallel)
        c = self.config
        weights = load_weights(folder, full, torch.float32, "cpu", parallel=parallel)
        kv_cfg = KvCacheConfig(c.num_layers, c.num_kv_heads, c.head_dim, PAGE, torch.float32)
        self.kv = PagedKvCache(kv_cfg, 64, "cpu")
        self.allocator = PageAllocator(64)
        self.reqs = ReqToTokenPool(4, 32, "cpu")
        self.attn = PagedAttention(AttentionShape(c.num_heads, c.num_kv_heads, c.head_dim,
                                                  PAGE), "cpu")
        self.model = DecoderModel(c, weights, self.attn, self.kv, fusions or Fusions(),
                                  parallel)
        self.slot = self.reqs.alloc()

    def step(self, tokens, start):
        """Run tokens at positions start..; returns the last token's logits."""
        end = start + len(tokens)
        have = len(self.reqs.pages[self.slot])
        need = -(-end // PAGE) - have
        if need > 0:
            self.reqs.append_pages(self.slot, self.allocator.alloc(need))
        loc = self.reqs.slots_for(self.slot, start, end, PAGE)
        table = self.reqs.page_table[self.slot:self.slot + 1]
        plan = self.attn.plan_prefill([len(tokens)], [end], table) if len(tokens) > 1 or \
            start == 0 else self.attn.plan_decode([end], table)
        batch = ForwardBatch(torch.tensor(tokens), torch.arange(start, end),
                             torch.tensor(loc), plan, torch.tensor([len(tokens) - 1]))
        return self.model.forward(batch)[0]

    def greedy(self, prompt, steps):
        logits = self.step(prompt, 0)
        first = logits.clone()
        out = []
        for i in range(steps):
            token = int(logits.argmax())
            out.append(token)
            logits = self.step([token], len(prompt) + i)
        return first, out


@pytest.mark.parametrize("arch", ["qwen3", "llama"])
def test_matches_transformers(tmp_path, arch):
    hf = save_tiny_checkpoint(tmp_path, arch)
    prompt = torch.randint(0, COMMON["vocab_size"], (13,)).tolist()
    with torch.no_grad():
        want_logits = hf(torch.tensor([prompt])).logits[0, -1]
        want = hf.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False,
                           min_new_tokens=12)[0, len(prompt):].tolist()
    runner = Runner(tmp_path)
    got_logits, got = runner.greedy(prompt, 12)
    torch.testing.assert_close(got_logits, want_logits, rtol=1e-4, atol=1e-4)
    assert got == want
    # Every fusion switched off gives the same tokens.
    plain = Runner(tmp_path, Fusions(fused_rope_kv=False, fused_add_rmsnorm=False,
                                     fused_qk_norm=False, fused_silu_mul=False,
                                     gemv_max_tokens=0, small_m_max_tokens=0))
    assert plain.greedy(prompt, 12)[1] == want
    # q/k norms and RoPE + KV write as two kernels (not the one fused op): the same tokens.
    two = Runner(tmp_path, Fusions(fused_qk_norm_rope=False))
    assert two.greedy(prompt, 12)[1] == want
    # Every plain matmul of up to 64 tokens through small_batch_linear (the default), or
    # only up to 8: the same tokens.
    small_m = Runner(tmp_path, Fusions(small_m_max_tokens=8))
    assert small_m.greedy(prompt, 12)[1] == want
    # ... with the norm and SiLU * up in their prologues: the same tokens.
    prologue = Runner(tmp_path, Fusions(small_m_max_tokens=64, small_m_prologue=True))
    assert prologue.greedy(prompt, 12)[1] == want


def test_config_reads_eos_ids_and_rejects_unknown_architectures(tmp_path):
    save_tiny_checkpoint(tmp_path, "qwen3")
    (tmp_path / "generation_config.json").write_text('{"eos_token_id": [7, 9]}')
    cfg = ModelConfig.from_folder(tmp_path)
    assert cfg.arch == "qwen3" and cfg.qk_norm and {7, 9} <= set(cfg.eos_token_ids)
    with pytest.raises(ValueError, match="unsupported architecture"):
        ModelConfig.from_dict({"architectures": ["GPT2LMHeadModel"]})


def test_dummy_weights_have_checkpoint_shapes(tmp_path):
    save_tiny_checkpoint(tmp_path, "llama")
    cfg = ModelConfig.from_folder(tmp_path)
    real = load_weights(tmp_path, cfg, torch.float32, "cpu")
    fake = dummy_weights(cfg, torch.bfloat16, "cpu")
    assert fake.embed.shape == real.embed.shape and fake.lm_head.shape == real.lm_head.shape
    for a, b in zip(real.layers, fake.layers, strict=True):
        assert a.qkv.shape == b.qkv.shape and a.gate_up.shape == b.gate_up.shape
        assert b.qkv.dtype == torch.bfloat16 and b.qkv.std() > 0


def test_gemv_path_needs_a_weight_it_takes():
    """1-token steps use small_batch_linear only for weights of width <= GEMV_MAX_K (wider
    intermediate sizes, e.g. 28672, stay on torch.matmul)."""
    from fuseinfer.models.decoder import DecoderModel
    from fuseinfer.ops.linear.small_batch_linear import GEMV_MAX_K

    model = DecoderModel.__new__(DecoderModel)
    model.fusions = Fusions()
    h = torch.randn(1, 8)
    assert model._gemv(h, torch.randn(4, GEMV_MAX_K))
    assert not model._gemv(h, torch.randn(4, GEMV_MAX_K + 1))
    assert not model._gemv(torch.randn(2, 8), torch.randn(4, 8))  # 2 tokens: cuBLAS
    assert model._small_m(torch.randn(64, 8))  # the small-M routing is on by default
    assert not model._small_m(torch.randn(65, 8))
    model.fusions = Fusions(small_m_max_tokens=0)
    assert not model._small_m(torch.randn(2, 8))
    model.fusions = Fusions(small_m_max_tokens=16)
    assert model._small_m(torch.randn(16, 8)) and not model._small_m(torch.randn(17, 8))
