"""Llama, Qwen3, Qwen3-MoE and GPT-OSS decoders from fuseinfer ops.

Per layer: (fused add +) RMSNorm -> one qkv matmul -> (Qwen3: RMSNorm of each q and k head,
in place, one launch) -> RoPE that also writes the rotated k and the v into the paged KV
cache -> paged attention -> o_proj -> fused add + RMSNorm -> one gate_up matmul ->
SiLU(gate) * up in one pass -> down. Qwen3-MoE's sparse layers replace the last three
with fused add + RMSNorm -> router matmul -> topk_softmax -> fused_moe (moe_block.py).
GPT-OSS: every layer sparse, biased q/k/v (added after the qkv matmul) and o projections,
a learned sink logit per head and a sliding window on every other layer (arguments of the
paged attention kernels, so one plan serves both kinds of layer), a router bias, and the
experts' biases and clamped SwiGLU inside fused_moe.
FP8 linear layers (`Fp8Weight`) take FP8 activations with 1 x 128 scales: the quantization
ends the op before each (the input and post-attention norms, SiLU * up) in the same kernel,
o_proj's input gets one group-quant kernel, then one fp8_blockwise_mm each.
Each fusion has a switch (`Fusions`), so its effect is measured end to end. The same code
runs on CUDA tensors (kernels) and CPU tensors (the ops' reference implementations).
Tensor parallel (models/tensor_parallel.py): the config and weights are one rank's
shard; o_proj, down and the experts' outputs are all-reduced before the residual add, the
vocab-parallel embedding is summed over the ranks and the logits gathered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..distributed.collectives import (
    all_gather_last,
    all_reduce_,
    fused_allreduce_add_rmsnorm,
    vocab_shard,
)
from ..distributed.parallel_state import SINGLE_RANK, ParallelState
from ..ops.activation.silu_and_mul import silu_and_mul
from ..ops.attention import DecodePlan, PagedAttention, PrefillPlan
from ..ops.kvcache.store_kv_cache import store_kv_cache
from ..ops.linear.small_batch_linear import (
    GEMV_MAX_K,
    MAX_M,
    gemv_takes_silu,
    small_batch_linear,
    takes_fused,
)
from ..ops.norm.qk_rmsnorm import qk_rmsnorm
from ..ops.norm.rmsnorm import fused_add_rmsnorm, rmsnorm
from ..ops.quant.fused_add_rmsnorm_quant_fp8 import fused_add_rmsnorm_quant_fp8
from ..ops.quant.per_token_group_quant_fp8 import per_token_group_quant_fp8
from ..ops.quant.silu_and_mul_quant_fp8 import silu_and_mul_quant_fp8
from ..ops.rope.cos_sin_cache import build_cos_sin_cache
from ..ops.rope.qk_rmsnorm_rope import qk_rmsnorm_rope
from ..ops.rope.rope_with_cos_sin_cache import rope_with_cos_sin_cache
from .config import ModelConfig
from .fp8_linear import Fp8Weight, fp8_matmul
from .kv_cache import PagedKvCache
from .moe_block import MoeWeights, moe_block
from .quantization import BLOCK

Linear = torch.Tensor | Fp8Weight  # [N, K] in the model dtype, or FP8 with block scales


@dataclass(frozen=True)
class Fusions:
    fused_rope_kv: bool = True  # RoPE and the KV-cache write in one kernel
    fused_add_rmsnorm: bool = True  # residual add and RMSNorm in one kernel
    fused_qk_norm: bool = True  # Qwen3's q and k head norms in one in-place kernel
    # ... and, with fused_rope_kv, the norms, RoPE and the KV write in one kernel
    fused_qk_norm_rope: bool = True
    fused_silu_mul: bool = True  # SiLU(gate) * up in one kernel
    # FP8 models: the RMSNorm before qkv / gate_up ends in the activation quantization
    fused_norm_quant: bool = True
    # FP8 models: SiLU(gate) * up ends in the down projection's activation quantization
    fused_silu_mul_quant: bool = True
    # Matmuls of at most this many tokens take the weight-streaming kernel (0: never).
    # On H100 it beat cuBLAS on every Qwen3-0.6B weight at 1 token, lost on the larger
    # ones at 4 (microbench/profile_runtime.py --only gemv).
    gemv_max_tokens: int = 1
    # ... and the 1-token down projection takes SiLU(gate) * up in the gemv's prologue
    # where the `linear` table's gemv_silu_max_k allows (off: silu_and_mul's kernel, then
    # the plain gemv)
    gemv_silu_mul: bool = True
    # Matmuls of 1..this many tokens (at most 64) not taken by the gemv go through
    # small_batch_linear, whose `linear` table picks split_k, the gemv or cuBLAS per M
    # (0: off). On the H200 it made 8-token decode 1.094x faster (Qwen3-0.6B, same run)
    # and left batch 1, 32 and 64 unchanged.
    small_m_max_tokens: int = 64
    # ... and where it picks split_k, the RMSNorm before a projection and SiLU * up before
    # the down projection ride in its prologue. Off: on the H200 (2026-12-01) the prologue
    # kernel ran 2-2.5x slower than the norm kernel plus the plain matmul at 8 tokens.
    small_m_prologue: bool = False
    # A single rank's o and down projections (float weights) add the residual in their
    # matmul's epilogue (small_batch_linear's add, cuBLAS's addmm), so the norm after
    # each reads one tensor (at one token: the next gemv's prologue norms without an add)
    residual_epilogue: bool = False
    # Tensor parallel: the allreduce of a layer's output, the residual add and the next
    # RMSNorm in one call (one kernel where the allreduce table says it wins)
    fused_allreduce_rmsnorm: bool = True
    enable_pdl: bool | None = None  # None: each op's table default


@dataclass
class ForwardBatch:
    """One step's inputs: the tokens, their positions, the KV slots they are written to,
    the attention plan, and which token rows yield logits (each request's last)."""

    input_ids: torch.Tensor  # int64 [T]
    positions: torch.Tensor  # int64 [T]
    cache_loc: torch.Tensor  # int64 [T]
    plan: PrefillPlan | DecodePlan
    logits_rows: torch.Tensor  # int64 [B]


@dataclass
class LayerWeights:
    input_norm: torch.Tensor
    qkv: Linear  # [(Hq + 2 Hkv) D, hidden]
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear | None  # [2 I, hidden]; None on a sparse (MoE) layer
    down: Linear | None
    moe: MoeWeights | None = None  # a sparse layer's router and experts
    qkv_bias: torch.Tensor | None = None  # [(Hq + 2 Hkv) D] (GPT-OSS)
    o_bias: torch.Tensor | None = None  # [hidden]
    sinks: torch.Tensor | None = None  # [Hq]: each head's sink logit (GPT-OSS)


@dataclass
class ModelWeights:
    embed: torch.Tensor
    layers: list[LayerWeights]
    norm: torch.Tensor
    lm_head: torch.Tensor  # the embedding itself when tied


class DecoderModel:
    def __init__(self, config: ModelConfig, weights: ModelWeights,
                 attention: PagedAttention, kv_cache: PagedKvCache,
                 fusions: Fusions = Fusions(), parallel: ParallelState = SINGLE_RANK) -> None:
        """config and weights: this rank's shard (the whole model on a single rank)."""
        self.config = config
        self.weights = weights
        self.attention = attention
        self.kv = kv_cache
        self.fusions = fusions
        self.parallel = parallel
        self.cos_sin = build_cos_sin_cache(config.rope, device=weights.embed.device)
        # FP8 KV-scale calibration's hook: sees each layer's rotated k and raw v
        # ([tokens, kv_heads, head_dim]) before they are written (runtime/kv_scale_calibration)
        self.kv_observer: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Embedding rows; vocab-parallel: this rank's rows, zeros elsewhere, summed."""
        if self.parallel.is_single:
            return self.weights.embed[ids]
        start, rows = vocab_shard(self.config.vocab_size, self.parallel)
        local = ids - start
        mine = (local >= 0) & (local < rows)
        h = self.weights.embed[local.clamp(0, rows - 1)] * mine[:, None]
        return all_reduce_(h, self.parallel)

    def _linear(self, h: torch.Tensor, weight: Linear, add: torch.Tensor | None = None
                ) -> torch.Tensor:
        """h @ weight.T (+ add, in the matmul's epilogue: a float weight only); decode
        steps of a few tokens take the weight-streaming kernel; an FP8 weight: h quantized
        per 1 x 128 group, then the FP8 GEMM."""
        if isinstance(weight, Fp8Weight):
            assert add is None
            pdl = self.fusions.enable_pdl
            q, scales = per_token_group_quant_fp8(h, BLOCK, column_major_scales=True,
                                                  enable_pdl=pdl)
            return fp8_matmul(q, scales, weight, h.dtype, pdl)
        if self._gemv(h, weight) or self._small_m(h):
            return small_batch_linear(h, weight, enable_pdl=self.fusions.enable_pdl, add=add)
        return h @ weight.t() if add is None else torch.addmm(add, h, weight.t())

    def _folds_residual(self, weight: Linear | None, residual: torch.Tensor | None
                        ) -> torch.Tensor | None:
        """The residual to add in this projection's epilogue, or None: the switch is on,
        one rank (a partial sum is reduced before the add) and a float weight."""
        if not self.fusions.residual_epilogue or not self.parallel.is_single or \
                weight is None or isinstance(weight, Fp8Weight):
            return None
        return residual

    def _gemv(self, h: torch.Tensor, weight: torch.Tensor) -> bool:
        """A step small enough for small_batch_linear's gemv with its prologues, on a weight
        it takes (K <= GEMV_MAX_K)."""
        return h.size(0) <= self.fusions.gemv_max_tokens and weight.size(1) <= GEMV_MAX_K

    def _small_m(self, h: torch.Tensor) -> bool:
        """A plain matmul small_batch_linear takes for its `linear` table (switch on)."""
        return 1 <= h.size(0) <= min(self.fusions.small_m_max_tokens, MAX_M)

    def _small_m_fused(self, h: torch.Tensor, weight: torch.Tensor) -> bool:
        """A matmul of 2+ tokens small_batch_linear takes with its prologue: switch on and
        its table picks split_k for this M and weight shape (one token belongs to the gemv
        switch)."""
        return self.fusions.small_m_prologue and h.size(0) > 1 and self._small_m(h) and \
            takes_fused(h.size(0), h.device, h.dtype, weight)

    def _reduce_norm(self, h: torch.Tensor, residual: torch.Tensor | None,
                     norm_weight: torch.Tensor) -> torch.Tensor | None:
        """Tensor parallel, h a partial sum: rmsnorm(residual + allreduce(h)) in one call
        (residual updated in place) when that fusion is on; None: not taken (the caller
        reduces h and normalizes as a single rank would)."""
        f = self.fusions
        if residual is None or not (f.fused_allreduce_rmsnorm and f.fused_add_rmsnorm):
            return None
        return fused_allreduce_add_rmsnorm(h, residual, norm_weight, self.config.rms_norm_eps,
                                           self.parallel, enable_pdl=f.enable_pdl)

    def _norm_linear(self, h: torch.Tensor, residual: torch.Tensor | None,
                     norm_weight: torch.Tensor, weight: Linear, reduce: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """(rmsnorm(residual + h) @ weight.T, the new residual). A 1-token step folds the
        add and the norm into the matmul's prologue (one kernel instead of two). reduce: h
        is this rank's partial sum, allreduced first (fused with the add and norm when
        that fusion is on)."""
        if reduce:
            normed = self._reduce_norm(h, residual, norm_weight)
            if normed is not None:
                assert residual is not None
                return self._linear(normed, weight), residual
            h = all_reduce_(h, self.parallel)
        if isinstance(weight, Fp8Weight):
            return self._norm_fp8_linear(h, residual, norm_weight, weight)
        if (self._gemv(h, weight) or self._small_m_fused(h, weight)) and \
                self.fusions.fused_add_rmsnorm:
            eps, pdl = self.config.rms_norm_eps, self.fusions.enable_pdl
            if residual is None:
                return small_batch_linear(h, weight, norm_weight=norm_weight, eps=eps,
                                                 enable_pdl=pdl), h
            return small_batch_linear(h, weight, norm_weight=norm_weight,
                                             residual=residual, eps=eps, enable_pdl=pdl)
        h, residual = self._norm_residual(h, residual, norm_weight)
        return self._linear(h, weight), residual

    def _norm_fp8_linear(self, h: torch.Tensor, residual: torch.Tensor | None,
                         norm_weight: torch.Tensor, weight: Fp8Weight
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """_norm_linear for an FP8 weight: add + RMSNorm + activation quantization in one
        kernel, then the FP8 GEMM (unfused: the bf16 norm path, then a group quant)."""
        pdl = self.fusions.enable_pdl
        if self.fusions.fused_norm_quant:
            if residual is None:  # first layer: 0 + h keeps it one kernel (h is only read)
                residual = torch.zeros_like(h)
            q, scales = fused_add_rmsnorm_quant_fp8(
                h, residual, norm_weight, BLOCK, self.config.rms_norm_eps,
                column_major_scales=True, enable_pdl=pdl)
            return fp8_matmul(q, scales, weight, h.dtype, pdl), residual
        normed, residual = self._norm_residual(h, residual, norm_weight)
        return self._linear(normed, weight), residual

    def _norm_residual(self, h: torch.Tensor, residual: torch.Tensor | None,
                       weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(normed, new residual): residual += h; h = rmsnorm(residual) (first: h alone)."""
        eps, pdl = self.config.rms_norm_eps, self.fusions.enable_pdl
        if residual is None:
            return rmsnorm(h, weight, eps, enable_pdl=pdl), h
        if self.fusions.fused_add_rmsnorm:
            fused_add_rmsnorm(h, residual, weight, eps, enable_pdl=pdl)
            return h, residual
        residual = residual + h
        return rmsnorm(residual, weight, eps, enable_pdl=pdl), residual

    def _attention(self, layer: int, w: LayerWeights, qkv: torch.Tensor,
                   batch: ForwardBatch, add: torch.Tensor | None = None) -> torch.Tensor:
        """o_proj(attention) (+ add, in o_proj's epilogue) of the qkv projection's
        output."""
        c = self.config
        tokens, d = qkv.size(0), c.head_dim
        q, k, v = qkv.split([c.num_heads * d, c.num_kv_heads * d, c.num_kv_heads * d], dim=1)
        k_cache, v_cache = self.kv.k[layer], self.kv.v[layer]
        k_scale, v_scale = self.kv.k_scale[layer], self.kv.v_scale[layer]
        f = self.fusions
        # calibration observes k and v between RoPE and the cache write: no fused write
        observe = self.kv_observer
        if observe is None and w.q_norm is not None and w.k_norm is not None and \
                f.fused_qk_norm and f.fused_qk_norm_rope and f.fused_rope_kv and \
                self.cos_sin.size(1) == d and d <= 512 and d & (d - 1) == 0:
            # full rotary; the kernel's head sizes
            qk_rmsnorm_rope(batch.positions, qkv, c.num_heads, c.num_kv_heads, d, w.q_norm,
                            w.k_norm, c.rms_norm_eps, self.cos_sin, k_cache, v_cache,
                            batch.cache_loc, k_scale, v_scale, enable_pdl=f.enable_pdl)
            return self._attend(layer, w, q, k_cache, v_cache, batch, add)
        if w.q_norm is not None and w.k_norm is not None and self.fusions.fused_qk_norm:
            qk_rmsnorm(qkv[:, :(c.num_heads + c.num_kv_heads) * d], w.q_norm,
                               w.k_norm, c.num_heads, c.rms_norm_eps,
                               enable_pdl=self.fusions.enable_pdl)  # q, k stay views
        elif w.q_norm is not None and w.k_norm is not None:
            eps, pdl = c.rms_norm_eps, self.fusions.enable_pdl
            q = rmsnorm(q.reshape(-1, d), w.q_norm, eps, enable_pdl=pdl).view(tokens, -1)
            k = rmsnorm(k.reshape(-1, d), w.k_norm, eps, enable_pdl=pdl).view(tokens, -1)
        pdl = self.fusions.enable_pdl
        if self.fusions.fused_rope_kv and observe is None:
            rope_with_cos_sin_cache(batch.positions, q, k, d, self.cos_sin, True, v,
                                         k_cache, v_cache, batch.cache_loc, k_scale, v_scale,
                                         enable_pdl=pdl)
        else:
            rope_with_cos_sin_cache(batch.positions, q, k, d, self.cos_sin, True,
                                         enable_pdl=pdl)
            if observe is not None:
                observe(layer, k.reshape(tokens, c.num_kv_heads, d),
                        v.reshape(tokens, c.num_kv_heads, d))
            store_kv_cache(k_cache, v_cache, batch.cache_loc, k, v, k_scale, v_scale,
                                   enable_pdl=pdl)
        return self._attend(layer, w, q, k_cache, v_cache, batch, add)

    def _attend(self, layer: int, w: LayerWeights, q: torch.Tensor, k_cache: torch.Tensor,
                v_cache: torch.Tensor, batch: ForwardBatch, add: torch.Tensor | None = None
                ) -> torch.Tensor:
        """o_proj(attention) of the normed, rotated q over the caches (this step's k and v
        written)."""
        c = self.config
        tokens, d = q.size(0), c.head_dim
        out = self.attention.run(batch.plan, q.view(tokens, c.num_heads, d), k_cache, v_cache,
                                 k_scale=self.kv.k_scale[layer], v_scale=self.kv.v_scale[layer],
                                 sinks=w.sinks, window_left=c.window_left(layer))
        o = self._linear(out.view(tokens, -1), w.o, add)
        return o if w.o_bias is None else o.add_(w.o_bias)

    def _mlp_down(self, w: LayerWeights, gate_up: torch.Tensor,
                  add: torch.Tensor | None = None) -> torch.Tensor:
        """down(SiLU(gate) * up) (+ add, in the down projection's epilogue)."""
        assert w.down is not None
        pdl = self.fusions.enable_pdl
        if isinstance(w.down, Fp8Weight) and self.fusions.fused_silu_mul_quant:
            q, scales = silu_and_mul_quant_fp8(gate_up, BLOCK, column_major_scales=True,
                                               enable_pdl=pdl)
            return fp8_matmul(q, scales, w.down, gate_up.dtype, pdl)
        if not self.fusions.fused_silu_mul:
            gate, up = gate_up.chunk(2, dim=1)
            return self._linear(F.silu(gate) * up, w.down, add)
        # SiLU inside the down projection's matmul (a float weight only)
        if not isinstance(w.down, Fp8Weight) and (self._small_m_fused(gate_up, w.down) or (
                self._gemv(gate_up, w.down) and self.fusions.gemv_silu_mul
                and gemv_takes_silu(w.down.size(1), gate_up.device))):
            return small_batch_linear(gate_up, w.down, silu_mul=True, enable_pdl=pdl, add=add)
        return self._linear(silu_and_mul(gate_up, enable_pdl=pdl), w.down, add)

    def _moe(self, h: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor,
             w: MoeWeights, reduce: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(the routed experts' output, the new residual) of a sparse layer; reduce: as
        _norm_linear's."""
        assert self.config.moe is not None
        normed = self._reduce_norm(h, residual, norm_weight) if reduce else None
        if normed is None:
            if reduce:
                h = all_reduce_(h, self.parallel)
            normed, residual = self._norm_residual(h, residual, norm_weight)
        assert residual is not None
        logits = self._linear(normed, w.gate)  # [T, E]: 1-token steps take the gemv
        if w.router_bias is not None:
            logits.add_(w.router_bias)
        return moe_block(normed, w, logits, self.config.moe, self.fusions.enable_pdl), \
            residual

    @torch.inference_mode()
    def forward(self, batch: ForwardBatch) -> torch.Tensor:
        """Logits [B, vocab] (the model dtype) for the batch's logits rows."""
        w, tp = self.weights, self.parallel
        h = self._embed(batch.input_ids)
        residual = None
        # Row-parallel outputs (attention's o_proj, the MLP's down, the experts) are
        # partial sums; the norm that reads each one reduces it first (reduce=True).
        partial = False
        for i, layer in enumerate(w.layers):
            qkv, residual = self._norm_linear(h, residual, layer.input_norm, layer.qkv,
                                              reduce=partial)
            if layer.qkv_bias is not None:
                qkv.add_(layer.qkv_bias)
            # with the residual added in o_proj's (and down's) epilogue, h is the new
            # residual and the norm after it adds nothing
            fold = self._folds_residual(layer.o, residual) if layer.moe is None else None
            h, partial = self._attention(i, layer, qkv, batch, fold), not tp.is_single
            residual = None if fold is not None else residual
            if layer.moe is not None:
                h, residual = self._moe(h, residual, layer.post_norm, layer.moe, partial)
                continue
            assert layer.gate_up is not None
            gate_up, residual = self._norm_linear(h, residual, layer.post_norm, layer.gate_up,
                                                  reduce=partial)
            fold = self._folds_residual(layer.down, residual)
            h = self._mlp_down(layer, gate_up, fold)
            residual = None if fold is not None else residual
        if partial:
            h = all_reduce_(h, tp)
        rows = batch.logits_rows
        logits, _ = self._norm_linear(h[rows], None if residual is None else residual[rows],
                                      w.norm, w.lm_head)
        if not tp.is_single:  # each rank's vocabulary slice, the padding cut off
            logits = all_gather_last(logits, tp)[:, :self.config.vocab_size]
        return logits  # model dtype: greedy argmax needs no float copy of [B, vocab]
