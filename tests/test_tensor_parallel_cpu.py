"""Tensor parallelism on the CPU: the decoder sharded over 2 and 4 ranks (one process each,
gloo) gives the single-rank logits and greedy tokens on tiny Qwen3, Llama (untied lm_head)
and Qwen3-MoE checkpoints: heads and kv heads split (and replicated when the ranks outnumber
the kv heads), gate_up / down and the experts split by intermediate size, the vocabulary
split with the last shard padded; plus the shapes and errors of the sharding itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from test_models_cpu import Runner  # tests/ is on sys.path
from tiny_checkpoint import COMMON, save_tiny_checkpoint, tiny_moe_model

from fuseinfer.distributed.parallel_state import ParallelState
from fuseinfer.models.config import ModelConfig
from fuseinfer.models.decoder import Fusions
from fuseinfer.models.loader import dummy_weights
from fuseinfer.models.tensor_parallel import local_config, shard_weights
from fuseinfer.runtime.engine import Engine, EngineArgs
from fuseinfer.runtime.rank_follower import follow_steps
from fuseinfer.runtime.sampling import SamplingParams

STEPS = 6


class CountingAllreduce:
    """Stands in for CustomAllreduce on the CPU (same two methods, through gloo) and counts
    what the decoder asks of it."""

    def __init__(self, group) -> None:
        self.group, self.calls = group, {"all_reduce_": 0, "fused_add_rmsnorm_": 0}

    def all_reduce_(self, x):
        self.calls["all_reduce_"] += 1
        dist.all_reduce(x, group=self.group)
        return x

    def fused_add_rmsnorm_(self, x, residual, weight, eps):
        self.calls["fused_add_rmsnorm_"] += 1
        dist.all_reduce(x, group=self.group)
        torch.ops.fuseinfer.fused_add_rmsnorm(x, residual, weight, eps, None)
        return x


def _rank(rank: int, world: int, folder: str, prompt: list[int], out: str,
          mode: str = "plain") -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank,
                            world_size=world)
    torch.set_num_threads(1)
    try:
        comm = CountingAllreduce(dist.group.WORLD) if mode == "comm" else None
        parallel = ParallelState(rank, world, dist.group.WORLD, allreduce=comm)
        fusions = Fusions(fused_allreduce_rmsnorm=mode != "unfused")
        runner = Runner(folder, fusions=fusions, parallel=parallel)
        first, tokens = runner.greedy(prompt, STEPS)
        if rank == 0:
            Path(out).write_text(json.dumps({"logits": first.tolist(), "tokens": tokens,
                                             "calls": comm.calls if comm else None}))
    finally:
        dist.destroy_process_group()


def _tensor_parallel(folder: Path, world: int, prompt: list[int], mode: str = "plain"
                     ) -> dict:
    out = folder / f"tp{world}_{mode}.json"
    mp.spawn(_rank, args=(world, str(folder), prompt, str(out), mode), nprocs=world,
             join=True)
    return json.loads(out.read_text())


@pytest.mark.parametrize("arch, world", [("qwen3", 2), ("llama", 2), ("qwen3", 4),
                                         ("qwen3_moe", 2)])
def test_sharded_decoder_matches_one_rank(tmp_path, arch, world):
    if arch == "qwen3_moe":
        save_tiny_checkpoint(tmp_path, arch, model=tiny_moe_model(router_scale=20.0))
    else:
        save_tiny_checkpoint(tmp_path, arch, tie=arch == "qwen3")
    prompt = torch.randint(0, COMMON["vocab_size"], (11,)).tolist()
    want_logits, want = Runner(tmp_path).greedy(prompt, STEPS)
    got = _tensor_parallel(tmp_path, world, prompt)
    torch.testing.assert_close(torch.tensor(got["logits"]), want_logits, rtol=1e-4,
                               atol=1e-4)
    assert got["tokens"] == want


ENGINE = dict(device="cpu", page_size=4, max_running_requests=2)
GREEDY = SamplingParams(max_new_tokens=7, temperature=0.0, ignore_eos=True)


def _engine_rank(rank: int, world: int, folder: str, prompts: list[list[int]],
                 out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous_engine",
                            rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        parallel = ParallelState(rank, world, dist.group.WORLD)
        args = EngineArgs(model=folder, **ENGINE)
        if rank == 0:
            with Engine(args, parallel) as engine:
                first = engine.generate(prompts, GREEDY)
                again = engine.generate(prompts, GREEDY)  # cached prefixes, reused slots
            Path(out).write_text(json.dumps([[o.output for o in first],
                                             [o.output for o in again]]))
        else:
            Path(f"{out}.steps{rank}").write_text(str(follow_steps(args, parallel)))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mode", ["unfused", "comm"])
def test_the_allreduce_seam(tmp_path, mode):
    """The norms reduce what they read through the state's allreduce (fused add + norm
    once per norm after the first layer's input), or, with the fusion off, the allreduce
    then the norm: the single-rank logits and tokens either way."""
    save_tiny_checkpoint(tmp_path, "qwen3", tie=True)
    prompt = torch.randint(0, COMMON["vocab_size"], (9,)).tolist()
    want_logits, want = Runner(tmp_path).greedy(prompt, STEPS)
    got = _tensor_parallel(tmp_path, 2, prompt, mode)
    torch.testing.assert_close(torch.tensor(got["logits"]), want_logits, rtol=1e-4,
                               atol=1e-4)
    assert got["tokens"] == want
    if mode == "comm":
        layers = ModelConfig.from_folder(tmp_path).num_layers
        forwards = 1 + STEPS  # the prefill, then one decode step per new token
        calls = got["calls"]
        # per forward: post-attention norm of every layer, input norm of layers 1.., the
        # embedding sum and the last layer's output reduced outside a norm
        assert calls["fused_add_rmsnorm_"] == forwards * (2 * layers - 1)
        assert calls["all_reduce_"] == forwards * 2


def test_two_rank_engine_generates_the_single_rank_tokens(tmp_path):
    """Rank 0 schedules (overlapped steps, the radix cache, more requests than slots) and
    broadcasts each step with its page-table changes; rank 1 follows until it closes."""
    save_tiny_checkpoint(tmp_path, "qwen3")
    base = torch.randint(0, COMMON["vocab_size"], (9,)).tolist()
    prompts = [base, base + [5, 6, 7], torch.randint(0, 384, (14,)).tolist(), base[:4]]
    with Engine(EngineArgs(model=str(tmp_path), **ENGINE)) as engine:
        want = [o.output for o in engine.generate(prompts, GREEDY)]
    out = tmp_path / "engine.json"
    mp.spawn(_engine_rank, args=(2, str(tmp_path), prompts, str(out)), nprocs=2, join=True)
    first, again = json.loads(out.read_text())
    assert first == want and again == want
    assert int(Path(f"{out}.steps1").read_text()) > 2 * GREEDY.max_new_tokens


def _fake_group(world: int) -> list[ParallelState]:
    return [ParallelState(r, world, group=object()) for r in range(world)]


def test_shards_cover_the_weights_once(tmp_path):
    cfg = ModelConfig.from_folder(_folder(tmp_path, "qwen3"))
    full = dummy_weights(cfg, torch.float32, "cpu", seed=1)
    d, inter = cfg.head_dim, cfg.intermediate_size
    shards = [shard_weights(full, cfg, p) for p in _fake_group(2)]
    # o_proj columns and down columns: the two shards side by side are the whole weight
    torch.testing.assert_close(torch.cat([s.layers[0].o for s in shards], dim=1),
                               full.layers[0].o)
    torch.testing.assert_close(torch.cat([s.layers[1].down for s in shards], dim=1),
                               full.layers[1].down)
    # gate_up: each shard its gate slice then the same up slice
    gate_up = full.layers[0].gate_up
    half = inter // 2
    torch.testing.assert_close(shards[1].layers[0].gate_up,
                               torch.cat([gate_up[half:inter], gate_up[inter + half:]]))
    # qkv of rank 1: q heads 2-3, kv head 1 (k then v)
    q_rows = cfg.num_heads * d
    kv_rows = cfg.num_kv_heads * d
    qkv = full.layers[0].qkv
    want = torch.cat([qkv[2 * d:4 * d], qkv[q_rows + d:q_rows + 2 * d],
                      qkv[q_rows + kv_rows + d:q_rows + kv_rows + 2 * d]])
    torch.testing.assert_close(shards[1].layers[0].qkv, want)
    tied = shards[0].lm_head is shards[0].embed
    assert tied == (full.lm_head is full.embed)


def test_vocab_shards_pad_the_last_rank(tmp_path):
    from fuseinfer.distributed.collectives import vocab_shard

    assert [vocab_shard(10, p) for p in _fake_group(4)] == [(0, 3), (3, 3), (6, 3), (9, 3)]
    cfg = ModelConfig.from_folder(_folder(tmp_path, "llama"))
    full = dummy_weights(cfg, torch.float32, "cpu", seed=2)
    ranks = _fake_group(2)
    parts = [shard_weights(full, cfg, p).lm_head for p in ranks]
    torch.testing.assert_close(torch.cat(parts)[:cfg.vocab_size], full.lm_head)


def test_sharding_errors_name_what_does_not_divide(tmp_path):
    cfg = ModelConfig.from_folder(_folder(tmp_path, "qwen3"))
    with pytest.raises(ValueError, match="attention heads"):
        local_config(cfg, _fake_group(3)[0])
    from dataclasses import replace

    with pytest.raises(ValueError, match="intermediate size"):
        local_config(replace(cfg, intermediate_size=191), _fake_group(2)[0])
    eight = local_config(replace(cfg, num_heads=8), _fake_group(8)[5])
    assert (eight.num_heads, eight.num_kv_heads) == (1, 1)  # kv heads replicated


def _folder(tmp_path: Path, arch: str) -> Path:
    save_tiny_checkpoint(tmp_path, arch, tie=arch == "qwen3")
    return tmp_path

