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

FP8 block-quantized weights (Fp8Weight linears, FP8 experts) are cut along whole 128 x 128
blocks, their scales with them: scale rows for a column-parallel (N) cut, scale columns for
a row-parallel (K) cut. Every slice a rank takes of a part (its q, k, v rows, its gate and
up rows, its o / down / w2 columns) must be a multiple of 128 wide, or a ValueError names
the layer, the size and the world size (nothing is requantized).

`ShardRanges` says which rows / columns a rank holds; `shard_weights` cuts full weights
with it, and `shard_loading.py` cuts each checkpoint tensor as it is read. The collectives
are in distributed/collectives.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..distributed.collectives import vocab_shard
from ..distributed.parallel_state import ParallelState
from .config import ModelConfig
from .decoder import LayerWeights, Linear, ModelWeights
from .fp8_linear import Fp8Weight, fp8_weight
from .moe_block import MoeWeights
from .quantization import BLOCK

Range = tuple[int, int]  # (start, size) along one dim


@dataclass(frozen=True)
class Part:
    """One checkpoint weight's slice inside a (possibly fused) weight along one dim."""

    name: str  # the checkpoint module, for messages (model.layers.3.self_attn.k_proj)
    offset: int  # where the part starts in the fused weight
    start: int  # this rank's slice of the part: [start, start + size)
    size: int
    total: int  # the part's full size

    @property
    def range(self) -> Range:
        return self.offset + self.start, self.size


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


@dataclass(frozen=True)
class ShardRanges:
    """The rows / columns of each weight that one rank holds, as (start, size)."""

    world: int
    q: Range  # rows of q_proj (columns of o_proj)
    kv: Range  # rows of k_proj and of v_proj
    inter: Range  # rows of gate_proj and of up_proj (columns of down_proj)
    moe_inter: Range | None  # the same for each expert
    vocab: Range  # (first row, rows): rows past the vocabulary are zeros
    q_rows: int  # the full sizes
    kv_rows: int
    intermediate: int
    moe_intermediate: int

    @classmethod
    def of(cls, config: ModelConfig, parallel: ParallelState) -> ShardRanges:
        local_config(config, parallel)  # checks what must divide, GPT-OSS refused
        d = config.head_dim
        q0, q_heads = _split(config.num_heads, parallel, "the attention heads")
        kv0, kv_heads = kv_heads_of(config, parallel)
        moe = config.moe
        return cls(world=parallel.world_size, q=(q0 * d, q_heads * d),
                   kv=(kv0 * d, kv_heads * d),
                   inter=_split(config.intermediate_size, parallel, "the intermediate size"),
                   moe_inter=None if moe is None else _split(
                       moe.intermediate_size, parallel, "the experts' intermediate size"),
                   vocab=vocab_shard(config.vocab_size, parallel),
                   q_rows=config.num_heads * d, kv_rows=config.num_kv_heads * d,
                   intermediate=config.intermediate_size,
                   moe_intermediate=0 if moe is None else moe.intermediate_size)

    def qkv(self, prefix: str) -> list[Part]:
        """Rows of the fused q/k/v weight: this rank's q rows, k rows, v rows."""
        (q0, q), (k0, k) = self.q, self.kv
        return [Part(prefix + "q_proj", 0, q0, q, self.q_rows),
                Part(prefix + "k_proj", self.q_rows, k0, k, self.kv_rows),
                Part(prefix + "v_proj", self.q_rows + self.kv_rows, k0, k, self.kv_rows)]

    def o(self, prefix: str) -> list[Part]:
        return [Part(prefix + "o_proj", 0, *self.q, self.q_rows)]

    def gate_up(self, prefix: str, moe: bool = False) -> list[Part]:
        """Rows of a fused gate/up weight (dense, or an expert's): gate slice, up slice."""
        (i0, size), full = (self.moe_inter, self.moe_intermediate) if moe else \
            (self.inter, self.intermediate)
        return [Part(prefix + "gate_proj", 0, i0, size, full),
                Part(prefix + "up_proj", full, i0, size, full)]

    def down(self, prefix: str, moe: bool = False) -> list[Part]:
        (i0, size), full = (self.moe_inter, self.moe_intermediate) if moe else \
            (self.inter, self.intermediate)
        return [Part(prefix + "down_proj", 0, i0, size, full)]


def block_range(part: Part, dim: int, world: int) -> Range:
    """The 128-blocks (first, count) of an FP8 part's slice; a slice that is not whole
    blocks is refused, the same way on every rank (the sizes are the same on all)."""
    start, size = part.range
    if start % BLOCK or size % BLOCK:
        what = "rows" if dim == -2 else "columns"
        raise ValueError(
            f"tensor parallelism: {part.name}: FP8 block-quantized weights are cut along "
            f"whole {BLOCK} x {BLOCK} blocks, but each rank's share of its {part.total} "
            f"{what} at world size {world} is {size} (this rank: [{part.start}, "
            f"{part.start + size})), not a multiple of {BLOCK}")
    return start // BLOCK, size // BLOCK


def take(t: torch.Tensor, dim: int, ranges: list[Range]) -> torch.Tensor:
    """The ranges of t along dim, concatenated (a fresh contiguous tensor)."""
    parts = [t.narrow(dim, start, size) for start, size in ranges]
    return (parts[0] if len(parts) == 1 else torch.cat(parts, dim)).contiguous()


def take_blocks(q: torch.Tensor, scales: torch.Tensor, dim: int, parts: list[Part],
                world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 values and their block scales cut together (dim -2: rows, -1: columns)."""
    blocks = [block_range(p, dim, world) for p in parts]
    return take(q, dim, [p.range for p in parts]), take(scales, dim, blocks)


def _linear(w: Linear, dim: int, parts: list[Part], world: int) -> Linear:
    if isinstance(w, Fp8Weight):
        return fp8_weight(*take_blocks(w.q, w.scale, dim, parts, world), name=parts[0].name)
    return take(w, dim, [p.range for p in parts])


def _vocab_rows(w: torch.Tensor, start: int, rows: int) -> torch.Tensor:
    """Rows [start, start + rows) of w, zero-padded past the vocabulary."""
    out = torch.zeros(rows, w.shape[1], dtype=w.dtype, device=w.device)
    have = max(0, min(rows, w.shape[0] - start))
    out[:have] = w[start:start + have]
    return out


def _moe(moe: MoeWeights, r: ShardRanges, prefix: str) -> MoeWeights:
    rows, cols = r.gate_up(prefix, moe=True), r.down(prefix, moe=True)
    if moe.w13_scales is None or moe.w2_scales is None:
        return MoeWeights(gate=moe.gate, w13=take(moe.w13, -2, [p.range for p in rows]),
                          w2=take(moe.w2, -1, [p.range for p in cols]))
    w13, s13 = take_blocks(moe.w13, moe.w13_scales, -2, rows, r.world)
    w2, s2 = take_blocks(moe.w2, moe.w2_scales, -1, cols, r.world)
    return MoeWeights(gate=moe.gate, w13=w13, w2=w2, w13_scales=s13, w2_scales=s2)


def shard_weights(weights: ModelWeights, config: ModelConfig, parallel: ParallelState
                  ) -> ModelWeights:
    """This rank's shard of the full weights (the layout the module docstring gives);
    float and FP8 alike."""
    if parallel.is_single:
        return weights
    r = ShardRanges.of(config, parallel)  # checks divisibility first
    w = r.world
    layers = []
    for i, layer in enumerate(weights.layers):
        attn, mlp = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        qkv, o = _linear(layer.qkv, -2, r.qkv(attn), w), _linear(layer.o, -1, r.o(attn), w)
        moe = None if layer.moe is None else _moe(layer.moe, r, mlp + "experts.*.")
        gate_up, down = layer.gate_up, layer.down
        if gate_up is not None and down is not None:
            gate_up = _linear(gate_up, -2, r.gate_up(mlp), w)
            down = _linear(down, -1, r.down(mlp), w)
        layers.append(LayerWeights(
            input_norm=layer.input_norm, qkv=qkv, q_norm=layer.q_norm, k_norm=layer.k_norm,
            o=o, post_norm=layer.post_norm, gate_up=gate_up, down=down, moe=moe))
    v0, v_rows = r.vocab
    embed = _vocab_rows(weights.embed, v0, v_rows)
    tied = weights.lm_head is weights.embed
    lm_head = embed if tied else _vocab_rows(weights.lm_head, v0, v_rows)
    return ModelWeights(embed=embed, layers=layers, norm=weights.norm, lm_head=lm_head)
