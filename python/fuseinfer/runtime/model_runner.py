"""The model runner: everything on the device side of a step, for one rank.

It owns the model and its weights, the KV cache buffers and the request page table, the
attention plans, the decode CUDA graphs, sampling and logprobs. The engine hands it a
step's host inputs (`StepInputs`) and gets tokens back:

    out = runner.forward(inputs)      # StepOutput: device tensors, nothing waited for
    step = runner.launch(inputs)      # forward + a non-blocking copy to the host
    result = runner.resolve(step)     # waits for that step: StepResult (host lists)

`launch` returns a placeholder id per sampled token: until `resolve`, a later step's
inputs may carry that id in place of the token, and the runner reads the token on the
device from its future buffer (no host sync; this is what overlap scheduling needs).

A runner is built per rank over a `ParallelState`: with several ranks it holds this rank's
shard (models/tensor_parallel.py: heads, kv heads and intermediate sizes split, the
vocabulary too), read per shard (each checkpoint tensor sliced as it is read,
models/shard_loading.py), and its KV cache holds only its kv heads; every rank runs the same
steps (rank 0's engine broadcasts them, runtime/rank_follower.py).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..distributed.collectives import min_over_ranks
from ..distributed.custom_allreduce import CustomAllreduce, custom_allreduce_usable
from ..distributed.parallel_state import SINGLE_RANK, ParallelState
from ..models.config import ModelConfig
from ..models.decoder import DecoderModel, ForwardBatch, Fusions, ModelWeights
from ..models.kv_cache import FP8, KvCacheConfig, PagedKvCache
from ..models.loader import dummy_weights, load_weights
from ..models.tensor_parallel import local_config
from ..ops import AttentionShape, PagedAttention
from ..ops.host_copy import to_device
from ..ops.sampling.greedy_sample import greedy_sample
from .cuda_graph_runner import DecodeGraphRunner
from .engine_args import EngineArgs
from .host_inputs import StepInputs
from .kv_pool import ReqToTokenPool, pages_for_budget
from .kv_scale_calibration import KvScaleReport, calibrate_kv_scales
from .logit_adjust import HistoryReset, LogitAdjustments, TokenHistory
from .sampling import SamplingBatch, SamplingParams, sample, token_logprobs
from .step_output import TokenLogprob

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class StepOutput:
    """What one step sampled, on the device (one row per sampling work item)."""

    tokens: torch.Tensor  # int64 [n]
    # (the sampled token's [n], the top values [n, k], the top ids [n, k]) when a row asked
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None
    wants: tuple[int | None, ...]  # per row: top-k logprobs asked (None: none)
    in_future: bool = False  # the tokens are already in the future buffer (greedy_sample)


@dataclass(frozen=True)
class InFlightStep:
    """A launched step: its placeholder ids and the host copies that `resolve` reads."""

    placeholders: list[int]  # stand for the sampled tokens until resolved
    tokens: torch.Tensor  # host copy of the sampled tokens (ready after the event)
    event: torch.cuda.Event | None
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None  # host copies
    wants: tuple[int | None, ...]


@dataclass
class SamplingRows:
    """What a step's sampling rows need, derived from their params alone; kept by the runner
    and reused while the rows stay the same requests with the same params objects (a decode
    step of an unchanged running set: the common case)."""

    vocab_size: int  # the key: the logits' columns, the request ids and their params
    rids: list[int]
    params: list[SamplingParams]  # compared by identity
    adjusts: bool  # any logit adjustment (penalty, bias, min_new_tokens)
    greedy: bool  # every row greedy: an argmax, no sampling tensors
    wants: tuple[int | None, ...]  # per row: top-k logprobs asked (None: none)
    batch: SamplingBatch | None  # the sampling tensors (None when greedy)


@dataclass(frozen=True)
class StepResult:
    tokens: list[int]  # one per sampling work item, in order
    logprobs: list[TokenLogprob | None] | None  # per token, when any row asked


class ModelRunner:
    def __init__(self, args: EngineArgs, parallel: ParallelState = SINGLE_RANK) -> None:
        self.args = args
        self.parallel = parallel
        device = args.device if args.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        cpu = self.device.type == "cpu"
        if not cpu and not parallel.is_single and not args.disable_custom_allreduce \
                and custom_allreduce_usable(parallel, self.device):
            parallel = replace(parallel, allreduce=CustomAllreduce(parallel, self.device))
            self.parallel = parallel
        dtype = _DTYPES[args.dtype] if args.dtype != "auto" else (
            torch.float32 if cpu else torch.bfloat16)
        from ..models.bundled import resolve_model

        folder = resolve_model(args.model)
        self.config = ModelConfig.from_folder(folder)  # the whole model's
        c = local_config(self.config, parallel)  # this rank's shard (all of it on one rank)
        weights = self._weights(folder, dtype)  # this rank's shard, read per shard
        kv_dtype = FP8 if args.kv_cache_dtype == "fp8_e4m3" else dtype
        kv_cfg = KvCacheConfig(c.num_layers, c.num_kv_heads, c.head_dim, args.page_size,
                               kv_dtype)
        context = min(args.max_context_len or c.max_position, c.max_position)
        self.max_pages = -(-context // args.page_size)  # per request
        # every rank holds the same pages (rank 0 hands out their ids): the smallest budget
        pages = min_over_ranks(self._num_pages(kv_cfg), parallel, self.device)
        self.kv_cache = PagedKvCache(kv_cfg, pages, self.device)
        self.req_pool = ReqToTokenPool(args.max_running_requests + 1, self.max_pages,
                                       self.device)
        self.attention = PagedAttention(
            AttentionShape(c.num_heads, c.num_kv_heads, c.head_dim, args.page_size,
                           kv_fp8=kv_dtype == FP8),
            self.device, max_batch=args.max_running_requests,
            enable_pdl=False if args.disable_pdl else None,
            fused_merge={"auto": None, "on": True, "off": False}[args.fused_decode_merge],
            hopper_prefill=not args.disable_hopper_prefill)
        fusions = Fusions(fused_rope_kv=not args.disable_fused_rope_kv,
                          fused_add_rmsnorm=not args.disable_fused_add_rmsnorm,
                          fused_qk_norm=not args.disable_fused_qk_norm,
                          fused_qk_norm_rope=not args.disable_fused_qk_norm_rope,
                          fused_silu_mul=not args.disable_fused_silu_mul,
                          fused_norm_quant=not args.disable_fused_norm_quant,
                          fused_silu_mul_quant=not args.disable_fused_silu_mul_quant,
                          gemv_max_tokens=0 if args.disable_small_batch_gemv else 1,
                          gemv_silu_mul=not args.disable_gemv_silu_mul,
                          # the CPU gains nothing from it (its path is the reference)
                          small_m_max_tokens=args.small_m_matmul_tokens
                          if self.device.type == "cuda" else 0,
                          small_m_prologue=args.small_m_prologue,
                          residual_epilogue=args.residual_epilogue,
                          fused_allreduce_rmsnorm=not args.disable_fused_allreduce_rmsnorm,
                          enable_pdl=False if args.disable_pdl else None)
        self.model = DecoderModel(c, weights, self.attention, self.kv_cache, fusions, parallel)
        # FP8 KV: per-head scales from one prefill, before any graph captures the cache
        self.kv_scales: KvScaleReport | None = None
        if kv_dtype == FP8 and args.kv_cache_scales == "calibrate":
            self.kv_scales = calibrate_kv_scales(self.model, context)
        # Tokens of steps in flight, read by the next step's inputs (overlap scheduling).
        self._future = torch.zeros(4 * (args.max_running_requests + 1), dtype=torch.int64,
                                   device=self.device)
        self._next_future = 0
        # penalized requests' token counts, per page-table row (allocated on first use)
        self.history = TokenHistory(args.max_running_requests + 1, c.vocab_size, self.device)
        self._sampling_rows: SamplingRows | None = None  # the last step's (sampling_rows)
        if fusions.small_m_max_tokens and self.device.type == "cuda":
            from ..ops.linear.small_batch_linear import reserve_counters

            reserve_counters(self.device)  # split_k's counters exist before any capture
        self.graphs: DecodeGraphRunner | None = None
        if self.device.type == "cuda" and not args.disable_cuda_graph:
            bs = min(args.cuda_graph_max_bs, args.max_running_requests)
            self.graphs = DecodeGraphRunner(self.model, self.max_pages, bs)
            self.graphs.capture()

    def _weights(self, folder: Path, dtype: torch.dtype) -> ModelWeights:
        a = self.args
        if a.load_format == "auto" and not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder}: no *.safetensors weights; use "
                                    "load_format='dummy' (--load-format dummy) for random ones")
        quantize = a.quantization == "fp8"
        dequantize = a.moe_weight_dtype == "bf16"
        if a.load_format == "dummy":
            return dummy_weights(self.config, dtype, self.device, a.seed, quantize, dequantize,
                                 self.parallel)
        return load_weights(folder, self.config, dtype, self.device, quantize, dequantize,
                            self.parallel)

    def _num_pages(self, kv_cfg: KvCacheConfig) -> int:
        a = self.args
        if a.max_total_tokens is not None:
            return -(-a.max_total_tokens // a.page_size) + 1  # + the reserved pad page
        if self.device.type != "cuda":
            return -(-65536 // a.page_size) + 1
        torch.cuda.empty_cache()  # memory cached by torch but unused counts as free here
        free, total = torch.cuda.mem_get_info(self.device)
        return pages_for_budget(kv_cfg, total, a.mem_fraction_static, total - free)

    def close(self) -> None:
        """Free the device memory: weights, KV cache, page table, graphs, buffers. The
        caller makes sure no step is in flight."""
        self.model = self.graphs = self.kv_cache = None  # type: ignore[assignment]
        self.attention = self.req_pool = self._future = None  # type: ignore[assignment]
        self.history = self._sampling_rows = None  # type: ignore[assignment]
        if self.parallel.allreduce is not None:
            self.parallel.allreduce.close()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    # ---- one step -----------------------------------------------------------------------
    def _put(self, values: list[int]) -> torch.Tensor:
        """Host ints to an int64 device tensor without a sync (a sync would stall the CPU
        behind the step in flight and undo the overlap)."""
        return to_device(values, torch.int64, self.device)

    def _token_ids(self, ids: list[int]) -> torch.Tensor:
        """Token ids on the device; a placeholder -(1 + k) is the token sampled into slot k
        of the future buffer by a step still in flight (read on the device, no sync)."""
        if min(ids, default=0) >= 0:
            return self._put(ids)
        if max(ids) < 0:  # all in flight (decode with overlap): one gather
            return self._future[self._put([-1 - t for t in ids])]
        raw = self._put(ids)
        return torch.where(raw >= 0, raw, self._future[(-raw - 1).clamp_min(0)])

    def logits(self, inputs: StepInputs) -> torch.Tensor:
        """Logits of each work item's last token: a graph replay for decode batches that
        fit one, else an eager forward."""
        if inputs.decode and self.graphs is not None \
                and self.graphs.padded_size(len(inputs.input_ids)) is not None:
            slots = self._put(inputs.req_slots)
            ids = self._token_ids(inputs.input_ids)
            return self.graphs.replay(self.graphs.prepare(
                ids, inputs.positions, inputs.cache_loc, self.req_pool.page_table, slots,
                inputs.kv_lens))
        return self.model.forward(self.forward_batch(inputs))

    def forward_batch(self, inputs: StepInputs) -> ForwardBatch:
        """The eager forward's device inputs of a step (the host side of batch building):
        token ids (placeholders read from the future buffer), positions, KV slots, the
        requests' page-table rows and the attention plan, the logits rows."""
        slots = self._put(inputs.req_slots)
        ids = self._token_ids(inputs.input_ids)
        table = self.req_pool.page_table[slots]
        plan = self.attention.plan_decode(inputs.kv_lens, table) if inputs.decode \
            else self.attention.plan_prefill(inputs.q_lens, inputs.kv_lens, table)
        return ForwardBatch(ids, self._put(inputs.positions), self._put(inputs.cache_loc),
                            plan, self._put(inputs.logits_rows))

    def forward(self, inputs: StepInputs, future_offset: int | None = None) -> StepOutput:
        """Run the step and sample (and logprobs where asked), all queued on the device:
        nothing waits for it. future_offset: where the step's tokens go in the future
        buffer; a greedy step then writes them there itself (one kernel with the argmax)."""
        logits = self.logits(inputs)
        if not inputs.samples_all:  # a python-list index would copy and sync
            logits = logits[self._put(inputs.sample_rows)]
        params = inputs.sampling
        if inputs.history_resets:
            self._reset_history(inputs.history_resets)
        rows = self.sampling_rows(inputs, logits.size(-1))
        adjust = LogitAdjustments.build(params, [inputs.req_slots[i] for i in
                                                 inputs.sample_rows],
                                        inputs.masked_stops, self.device) \
            if rows.adjusts else None
        scores = logits if adjust is None else adjust.apply(logits, self.history)
        in_future = bool(params) and rows.greedy and future_offset is not None and \
            not self.args.disable_fused_greedy_sample
        if not params:
            tokens = torch.empty(0, dtype=torch.int64, device=self.device)
        elif in_future:  # the argmax and the future-buffer write in one kernel
            tokens = greedy_sample(scores, self._future, future_offset)
        elif rows.greedy:  # no sampling tensors to build
            tokens = scores.argmax(dim=-1)
        else:
            tokens = sample(scores, rows.batch, self._put(inputs.steps))
        if adjust is not None and adjust.penalty_rows is not None:  # the history grows
            self.history.add(adjust.penalty_slots, tokens[adjust.penalty_rows])
        wants = rows.wants
        lp = None
        if any(k is not None for k in wants):
            lp = token_logprobs(logits, tokens, max(k or 0 for k in wants))
        return StepOutput(tokens, lp, wants, in_future)

    def sampling_rows(self, inputs: StepInputs, vocab_size: int) -> SamplingRows:
        """The step's `SamplingRows` over logits of `vocab_size` columns: the previous
        step's when its rows are the same request ids with the very same params objects
        and the vocabulary is the same (what they hold depends on nothing else), else
        built (the sampling tensors only when some row is not greedy). The tensors are only
        read on the device, so a step in flight may share them."""
        last, rids, params = self._sampling_rows, inputs.rids, inputs.sampling
        if last is not None and last.vocab_size == vocab_size and last.rids == rids \
                and len(last.params) == len(params) \
                and all(map(operator.is_, last.params, params)):
            return last
        greedy = all(p.greedy for p in params)
        batch = None
        if params and not greedy:
            seed = self.args.seed * 1_000_003
            batch = SamplingBatch.build(params, vocab_size, self.device,
                                        [seed + rid for rid in rids])
        self._sampling_rows = SamplingRows(
            vocab_size, list(rids), list(params), any(p.adjusts_logits for p in params),
            greedy, tuple(p.logprobs for p in params), batch)
        return self._sampling_rows

    def _reset_history(self, resets: list[HistoryReset]) -> None:
        outputs = [t for r in resets for t in r.output]
        self.history.reset(resets, self._token_ids(outputs) if outputs else
                           torch.empty(0, dtype=torch.int64, device=self.device))

    def launch(self, inputs: StepInputs) -> InFlightStep:
        """Queue the step: forward, tokens into the future buffer and non-blocking copies
        to the host. Returns the placeholders that stand for its tokens until `resolve`."""
        n = len(inputs.sampling)
        if self._next_future + n > self._future.numel():  # keep each step's run contiguous
            self._next_future = 0
        first = self._next_future
        self._next_future += n
        out = self.forward(inputs, future_offset=first)
        host = torch.empty(n, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        if n:
            if not out.in_future:
                self._future[first:first + n].copy_(out.tokens)
            host.copy_(out.tokens, non_blocking=True)
        lp_host = None if out.logprobs is None else tuple(
            t.to("cpu", non_blocking=True) for t in out.logprobs)
        event = torch.cuda.Event() if self.device.type == "cuda" else None
        if event is not None:
            event.record()
        return InFlightStep([-(1 + k) for k in range(first, first + n)], host, event,
                            lp_host, out.wants)

    def resolve(self, step: InFlightStep) -> StepResult:
        """Wait for a launched step; its tokens (and logprobs) as host lists."""
        if step.event is not None:
            step.event.synchronize()
        entries = None
        if step.logprobs is not None:
            chosen, values, ids = (t.tolist() for t in step.logprobs)
            entries = [None if k is None else (chosen[i], list(zip(ids[i][:k], values[i][:k],
                                                                   strict=True)))
                       for i, k in enumerate(step.wants)]
        return StepResult(step.tokens.tolist(), entries)
