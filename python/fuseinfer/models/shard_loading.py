"""Per-shard loading: the slice of each checkpoint tensor that one tensor-parallel rank
holds, cut as the tensor is read (safetensors `get_slice`), so a rank never reads or
holds a whole sharded weight.

The cuts are tensor_parallel.py's (`ShardRanges`), named by checkpoint tensor:

    q_proj, k_proj, v_proj, gate_proj, up_proj (dense and per expert)   rows
    o_proj, down_proj (dense and per expert)                            columns
    mlp.experts.gate_up_proj [E, 2I, H] (stacked)                       gate rows + up rows
    mlp.experts.down_proj [E, H, I] (stacked)                           columns
    model.embed_tokens.weight, lm_head.weight                           vocab rows, padded
    `<weight>_scale_inv` (FP8)                                          its weight's cut / 128

Everything else (norms, the router) is read whole. An FP8 weight or scale whose slice is
not whole 128-blocks is refused (tensor_parallel.block_range). The loader fuses the local
parts (q/k/v, gate/up) afterwards, in the order shard_weights gives, so the result equals
shard_weights of the full weights.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch

from ..distributed.parallel_state import ParallelState
from .config import ModelConfig
from .fp8_linear import FP8
from .tensor_parallel import Part, ShardRanges, block_range

SCALE = "_scale_inv"
_LAYER = re.compile(r"^(model\.layers\.\d+\.)(.+)$")
_EXPERT = re.compile(r"^mlp\.experts\.\d+\.(gate_proj|up_proj|down_proj)\.weight$")
_VOCAB = ("model.embed_tokens.weight", "lm_head.weight")


@dataclass(frozen=True)
class Cut:
    dim: int  # -2: rows, -1: columns
    parts: list[Part]  # concatenated along dim


def _is_fp8(src: Any) -> bool:
    if isinstance(src, torch.Tensor):
        return src.dtype == FP8
    return src.get_dtype() == "F8_E4M3"  # a safetensors slice


def _shape(src: Any) -> list[int]:
    return list(src.shape) if isinstance(src, torch.Tensor) else list(src.get_shape())


class TensorSharder:
    """Which slice of each checkpoint tensor this rank holds, and the read of it."""

    def __init__(self, config: ModelConfig, parallel: ParallelState) -> None:
        self.ranges = ShardRanges.of(config, parallel)  # refuses what cannot be sharded

    def cut(self, name: str) -> Cut | None:
        """The weight's cut (None: replicated, read whole); for a `_scale_inv`, its
        weight's (in weight rows / columns)."""
        name = name.removesuffix(SCALE)
        m = _LAYER.match(name)
        if m is None:
            return None
        r, layer, rest = self.ranges, m.group(1), m.group(2)
        attn, mlp = layer + "self_attn.", layer + "mlp."
        q, k, v, o = r.qkv(attn) + r.o(attn)
        by_name = {"self_attn.q_proj.weight": Cut(-2, [q]),
                   "self_attn.k_proj.weight": Cut(-2, [_alone(k)]),
                   "self_attn.v_proj.weight": Cut(-2, [_alone(v)]),
                   "self_attn.o_proj.weight": Cut(-1, [o])}
        gate, up = r.gate_up(mlp)
        by_name |= {"mlp.gate_proj.weight": Cut(-2, [gate]),
                    "mlp.up_proj.weight": Cut(-2, [_alone(up)]),
                    "mlp.down_proj.weight": Cut(-1, r.down(mlp))}
        if r.moe_inter is not None:
            experts = mlp + "experts."
            by_name |= {"mlp.experts.gate_up_proj": Cut(-2, r.gate_up(experts, moe=True)),
                        "mlp.experts.down_proj": Cut(-1, r.down(experts, moe=True))}
            e = _EXPERT.match(rest)
            if e is not None:
                gate, up = r.gate_up(experts + "*.", moe=True)
                which = {"gate_proj": Cut(-2, [gate]), "up_proj": Cut(-2, [_alone(up)]),
                         "down_proj": Cut(-1, r.down(experts + "*.", moe=True))}
                return which[e.group(1)]
        return by_name.get(rest)

    def read(self, name: str, src: Any) -> torch.Tensor | None:
        """This rank's slice of `name` from src (a tensor or a safetensors slice, indexed
        only where this rank's rows / columns lie); None when `name` is read whole."""
        if name in _VOCAB:
            return self._vocab(src)
        cut = self.cut(name)
        if cut is None:
            return None
        ranges = [p.range for p in cut.parts]
        if name.endswith(SCALE):
            ranges = [block_range(p, cut.dim, self.ranges.world) for p in cut.parts]
        elif _is_fp8(src):  # refuse a weight whose slice its scales cannot follow
            for p in cut.parts:
                block_range(p, cut.dim, self.ranges.world)
        ndim = len(_shape(src))
        pieces = []
        for start, size in ranges:
            index = [slice(None)] * ndim
            index[ndim + cut.dim] = slice(start, start + size)
            pieces.append(src[tuple(index)])
        if len(pieces) > 1:
            return torch.cat(pieces, dim=cut.dim)
        # a tensor's slice is a view: copied, so the full tensor can be freed
        return pieces[0].clone() if isinstance(src, torch.Tensor) else pieces[0]

    def _vocab(self, src: Any) -> torch.Tensor:
        """Rows [start, start + rows) of the vocabulary, zero-padded past its end."""
        start, rows = self.ranges.vocab
        vocab, hidden = _shape(src)
        have = max(0, min(rows, vocab - start))
        head = src[start:start + have] if have else src[0:0]
        if have == rows:
            return head.clone() if isinstance(src, torch.Tensor) else head
        pad = torch.zeros(rows - have, hidden, dtype=head.dtype, device=head.device)
        return torch.cat([head, pad])

    def experts(self, w13: torch.Tensor, w2: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's slice of full stacked float experts (w13 [E, 2I, H], w2 [E, H, I])."""
        r = self.ranges
        rows = [p.range for p in r.gate_up("", moe=True)]
        cols = [p.range for p in r.down("", moe=True)]
        return (torch.cat([w13.narrow(-2, s, n) for s, n in rows], dim=-2),
                torch.cat([w2.narrow(-1, s, n) for s, n in cols], dim=-1))


def _alone(p: Part) -> Part:
    """A fused part read as its own tensor: offset 0 in it."""
    return Part(p.name, 0, p.start, p.size, p.total)
