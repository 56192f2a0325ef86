"""Tensor parallelism of the decoder: how one rank's shard of the weights is cut, the
config that shard has, and the two collectives the forward pass needs.

Per layer (Megatron-style): qkv is column-parallel by heads (q heads split evenly; k/v
heads split too, or each rank keeps the one its q heads read when there are fewer kv heads
than ranks), o_proj row-parallel; gate_up column-parallel (each rank its slice of the gate
rows and the same slice of the up rows), down row-parallel; MoE experts by intermediate
size the same way, the router replicated. A row-parallel output is a partial sum: one
all-reduce before the residual add. The embedding and the lm_head are vocab-parallel
(ceil(V / world) rows each, the last shard padded): a token's row comes from the rank that
holds it (the others contribute zeros to an all-reduce), and the logits are gathered once.

The collectives are in distributed/collectives.py. FP8 checkpoints are not sharded yet (a clear
error).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..distributed.collectives import vocab_shard
from ..distributed.parallel_state import ParallelState
from .config import ModelConfig
from .decoder import LayerWeights, ModelWeights
from .fp8_linear import Fp8Weight
from .moe_block import MoeWeights


def _split(total: int, parallel: ParallelState, what: str) -> tuple[int, int]:
    if total % parallel.world_size:
        raise ValueError(f"tensor parallelism: {what} ({total}) must be divisible by the "
                         f"world size ({parallel.world_size})")
    size = total // parallel.world_size
    return parallel.rank * size, size


def kv_heads_of(config: ModelConfig, parallel: ParallelState) -> tuple[int, int]:
    """(first kv head, kv heads) this rank holds: an even split, or with fewer kv heads than
    ranks the one head its q heads attend through (replicated)."""
    world, kv = parallel.world_size, config.num_kv_heads
    if kv >= world:
        return _split(kv, parallel, "the kv heads")
    if world % kv:
        raise ValueError(f"tensor parallelism: the world size ({world}) must be a multiple "
                         f"of the kv heads ({kv}) when it exceeds them")
    return parallel.rank * kv // world, 1


def local_config(config: ModelConfig, parallel: ParallelState) -> ModelConfig:
    """The config of this rank's shard: its heads, kv heads and intermediate sizes."""
    if parallel.is_single:
        return config
    if config.quantization is not None:
        raise NotImplementedError("tensor parallelism: FP8 checkpoints are not sharded yet")
    if config.arch == "gpt_oss":
        raise NotImplementedError("tensor parallelism: GPT-OSS (biases, sinks, MXFP4 "
                                  "experts) is not sharded yet; run it with tp 1")
    _, heads = _split(config.num_heads, parallel, "the attention heads")
    _, kv_heads = kv_heads_of(config, parallel)
    _, inter = _split(config.intermediate_size, parallel, "the intermediate size")
    moe = config.moe
    if moe is not None:
        _, moe_inter = _split(moe.intermediate_size, parallel, "the experts' intermediate size")
        moe = replace(moe, intermediate_size=moe_inter)
    return replace(config, num_heads=heads, num_kv_heads=kv_heads, intermediate_size=inter,
                   moe=moe)


def _rows(w: torch.Tensor, start: int, size: int) -> torch.Tensor:
    return w[start:start + size].contiguous()


def _cols(w: torch.Tensor, start: int, size: int) -> torch.Tensor:
    return w[..., start:start + size].contiguous()


def _gate_up_rows(w: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """This rank's gate rows then the same up rows of a [..., 2I, H] weight."""
    inter = w.shape[-2] // 2
    gate, up = w[..., :inter, :], w[..., inter:, :]
    return torch.cat([gate[..., start:start + size, :], up[..., start:start + size, :]],
                     dim=-2).contiguous()


def _vocab_rows(w: torch.Tensor, start: int, rows: int) -> torch.Tensor:
    """Rows [start, start + rows) of w, zero-padded past the vocabulary."""
    out = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
    have = max(0, min(rows, w.shape[0] - start))
    out[:have] = w[start:start + have]
    return out


def shard_weights(weights: ModelWeights, config: ModelConfig, parallel: ParallelState
                  ) -> ModelWeights:
    """This rank's shard of the full weights (the layout the module docstring gives)."""
    if parallel.is_single:
        return weights
    local = local_config(config, parallel)  # checks divisibility first
    d = config.head_dim
    q0, q_heads = _split(config.num_heads, parallel, "the attention heads")
    kv0, kv_heads = kv_heads_of(config, parallel)
    i0, inter = _split(config.intermediate_size, parallel, "the intermediate size")
    q_rows, kv_rows = config.num_heads * d, config.num_kv_heads * d
    layers = []
    for layer in weights.layers:
        for w in (layer.qkv, layer.o, layer.gate_up, layer.down):
            if isinstance(w, Fp8Weight):
                raise NotImplementedError("tensor parallelism: FP8 weights are not sharded yet")
        q, k, v = layer.qkv.split([q_rows, kv_rows, kv_rows], dim=0)
        qkv = torch.cat([_rows(q, q0 * d, q_heads * d), _rows(k, kv0 * d, kv_heads * d),
                         _rows(v, kv0 * d, kv_heads * d)]).contiguous()
        moe = None
        if layer.moe is not None:
            assert local.moe is not None and config.moe is not None
            m0, _ = _split(config.moe.intermediate_size, parallel, "the experts' size")
            m_size = local.moe.intermediate_size
            moe = MoeWeights(gate=layer.moe.gate,
                             w13=_gate_up_rows(layer.moe.w13, m0, m_size),
                             w2=_cols(layer.moe.w2, m0, m_size))
        layers.append(LayerWeights(
            input_norm=layer.input_norm, qkv=qkv, q_norm=layer.q_norm, k_norm=layer.k_norm,
            o=_cols(layer.o, q0 * d, q_heads * d), post_norm=layer.post_norm,
            gate_up=None if layer.gate_up is None else _gate_up_rows(layer.gate_up, i0, inter),
            down=None if layer.down is None else _cols(layer.down, i0, inter), moe=moe))
    v0, v_rows = vocab_shard(config.vocab_size, parallel)
    embed = _vocab_rows(weights.embed, v0, v_rows)
    tied = weights.lm_head is weights.embed
    lm_head = embed if tied else _vocab_rows(weights.lm_head, v0, v_rows)
    return ModelWeights(embed=embed, layers=layers, norm=weights.norm, lm_head=lm_head)
