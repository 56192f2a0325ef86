"""The engine: the step loop over the scheduler and the model (CPU or CUDA). With overlap
scheduling (the default) step N+1 is queued on the device before step N's tokens are read
back, so the host prepares the next step while the device runs the current one.

    with Engine(EngineArgs(model="/path/to/hf-folder")) as engine:
        outs = engine.generate([[1, 2, 3], [4, 5]], SamplingParams(max_new_tokens=16))
        req = engine.add_request([1, 2, 3], SamplingParams(max_new_tokens=8))
        while engine.busy:
            for delta in engine.step():  # RequestDelta: new tokens, finish
                ...
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..models.config import ModelConfig
from ..models.decoder import DecoderModel, ForwardBatch, Fusions
from ..models.loader import dummy_weights, load_weights
from ..ops import AttentionShape, PagedAttention
from ..ops.host_copy import to_device
from .cuda_graph_runner import DecodeGraphRunner
from .engine_args import EngineArgs
from .gc_control import GcPauseMonitor, freeze_after_warmup
from .kv_pool import FP8, KvCacheConfig, ReqToTokenPool, TokenToKVPool, pages_for_budget
from .radix_cache import RadixCache
from .sampling import SamplingBatch, SamplingParams, sample, token_logprobs
from .scheduler import Request, ScheduledBatch, Scheduler, SchedulerConfig
from .step_output import FinishReason, RequestDelta

__all__ = ["Engine", "EngineArgs", "EngineStats", "GenerateOutput"]

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class _InFlight:
    batch: ScheduledBatch
    tokens: torch.Tensor  # host copy of the sampled tokens (ready after the event)
    event: torch.cuda.Event | None
    # host copies (chosen [n], top values [n, k], top ids [n, k]) when a request asked
    logprobs: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
    wants: tuple[int | None, ...] = ()


@dataclass(frozen=True)
class GenerateOutput:
    rid: int
    prompt: list[int]
    output: list[int]
    finish_reason: FinishReason
    finish_detail: str | None = None  # why it was rejected


@dataclass(frozen=True)
class EngineStats:
    waiting: int  # queued requests (retracted ones included)
    running: int  # admitted requests (one being prefilled in chunks included)
    kv_usage: float  # fraction of KV pages in use (radix-cached pages count)


class Engine:
    def __init__(self, args: EngineArgs) -> None:
        self.args = args
        device = args.device if args.device != "auto" else (
            "cuda" if torch.cuda.is_available() else "cpu")
        self.device = torch.device(device)
        cpu = self.device.type == "cpu"
        dtype = _DTYPES[args.dtype] if args.dtype != "auto" else (
            torch.float32 if cpu else torch.bfloat16)
        from ..models.bundled import resolve_model

        folder = resolve_model(args.model)
        self.config = ModelConfig.from_folder(folder)
        c = self.config
        if args.load_format not in ("auto", "dummy"):
            raise ValueError(f"load_format must be auto or dummy, got {args.load_format!r}")
        if args.load_format == "auto" and not any(folder.glob("*.safetensors")):
            raise FileNotFoundError(f"{folder}: no *.safetensors weights; use "
                                    "load_format='dummy' (--load-format dummy) for random ones")
        weights = dummy_weights(c, dtype, self.device, args.seed) \
            if args.load_format == "dummy" else load_weights(folder, c, dtype, self.device)
        kv_dtype = FP8 if args.kv_cache_dtype == "fp8_e4m3" else dtype
        kv_cfg = KvCacheConfig(c.num_layers, c.num_kv_heads, c.head_dim, args.page_size,
                               kv_dtype)
        num_pages = self._num_pages(kv_cfg)
        context = min(args.max_context_len or c.max_position, c.max_position)
        max_pages = -(-context // args.page_size)
        self.kv = TokenToKVPool(kv_cfg, num_pages, self.device)
        self.reqs = ReqToTokenPool(args.max_running_requests + 1, max_pages, self.device)
        self.cache = RadixCache(args.page_size, self.kv.allocator.free,
                                disable=args.disable_radix_cache)
        self.scheduler = Scheduler(
            SchedulerConfig(args.max_running_requests, args.max_prefill_tokens,
                            args.chunked_prefill_size, args.schedule_policy),
            self.kv.allocator, self.reqs, self.cache, args.page_size)
        self.attention = PagedAttention(
            AttentionShape(c.num_heads, c.num_kv_heads, c.head_dim, args.page_size),
            self.device, max_batch=args.max_running_requests,
            enable_pdl=False if args.disable_pdl else None)
        fusions = Fusions(fused_rope_kv=not args.disable_fused_rope_kv,
                          fused_add_rmsnorm=not args.disable_fused_add_rmsnorm,
                          fused_qk_norm=not args.disable_fused_qk_norm,
                          fused_silu_mul=not args.disable_fused_silu_mul,
                          gemv_max_tokens=0 if args.disable_small_batch_gemv else 1,
                          enable_pdl=False if args.disable_pdl else None)
        self.model = DecoderModel(c, weights, self.attention, self.kv, fusions)
        self._warm = False
        self._in_flight: _InFlight | None = None
        # Tokens of steps in flight, read by the next step's inputs (overlap scheduling).
        self._future = torch.zeros(4 * (args.max_running_requests + 1), dtype=torch.int64,
                                   device=self.device)
        self._next_future = 0
        self.graphs: DecodeGraphRunner | None = None
        if self.device.type == "cuda" and not args.disable_cuda_graph:
            bs = min(args.cuda_graph_max_bs, args.max_running_requests)
            self.graphs = DecodeGraphRunner(self.model, max_pages, bs)
            self.graphs.capture()
        self.gc_monitor = GcPauseMonitor(args.gc_warning_threshold_secs) \
            if args.gc_warning_threshold_secs > 0 else None
        if self.gc_monitor is not None:
            self.gc_monitor.__enter__()
            weakref.finalize(self, self.gc_monitor.__exit__)  # detach when collected

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Free the engine's device memory (weights, KV cache, CUDA graphs) and detach its
        garbage-collector hook. The engine cannot run after this; closing twice is fine."""
        if self.gc_monitor is not None:
            self.gc_monitor.__exit__()
            self.gc_monitor = None
        if self._in_flight is not None and self._in_flight.event is not None:
            self._in_flight.event.synchronize()  # its kernels still use the buffers
        self._in_flight = None
        self.model = self.graphs = self.kv = self.attention = None  # type: ignore[assignment]
        self._future = None  # type: ignore[assignment]
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _num_pages(self, kv_cfg: KvCacheConfig) -> int:
        a = self.args
        if a.max_total_tokens is not None:
            return -(-a.max_total_tokens // a.page_size) + 1  # + the reserved pad page
        if self.device.type != "cuda":
            return -(-65536 // a.page_size) + 1
        torch.cuda.empty_cache()  # memory cached by torch but unused counts as free here
        free, total = torch.cuda.mem_get_info(self.device)
        return pages_for_budget(kv_cfg, total, a.mem_fraction_static, total - free)

    # ---- one step -----------------------------------------------------------------------
    def _host_inputs(self, batch: ScheduledBatch) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {k: [] for k in ("ids", "pos", "loc", "rows", "q_lens",
                                                     "kv_lens", "slots")}
        for w in batch.work:
            r = w.req
            assert r.slot is not None
            end = w.start + w.count
            out["ids"] += r.token_slice(w.start, end)
            out["pos"] += range(w.start, end)
            out["loc"] += self.reqs.slots_for(r.slot, w.start, end, self.args.page_size)
            out["rows"].append(len(out["ids"]) - 1)
            out["q_lens"].append(w.count)
            out["kv_lens"].append(end)
            out["slots"].append(r.slot)
        return out

    def _logits(self, batch: ScheduledBatch) -> torch.Tensor:
        """Logits of each work item's last token: a graph replay for decode batches that
        fit one, else an eager forward."""
        h = self._host_inputs(batch)
        slots = self._put(h["slots"])
        ids = self._resolve_ids(h["ids"])
        if batch.mode == "decode" and self.graphs is not None \
                and self.graphs.padded_size(len(h["ids"])) is not None:
            return self.graphs.replay(ids, h["pos"], h["loc"], self.reqs.page_table, slots,
                                      h["kv_lens"])
        table = self.reqs.page_table[slots]
        plan = self.attention.plan_decode(h["kv_lens"], table) if batch.mode == "decode" \
            else self.attention.plan_prefill(h["q_lens"], h["kv_lens"], table)
        fb = ForwardBatch(ids, self._put(h["pos"]), self._put(h["loc"]), plan,
                          self._put(h["rows"]))
        return self.model.forward(fb)

    def _put(self, values: list[int]) -> torch.Tensor:
        """Host ints to an int64 device tensor without a sync (a sync would stall the CPU
        behind the step in flight and undo the overlap)."""
        return to_device(values, torch.int64, self.device)

    def _resolve_ids(self, ids: list[int]) -> torch.Tensor:
        """Token ids on the device; a placeholder -(1 + k) is the token sampled into slot k
        of the future buffer by a step still in flight (read on the device, no sync)."""
        if min(ids, default=0) >= 0:
            return self._put(ids)
        if max(ids) < 0:  # all in flight (decode with overlap): one gather
            return self._future[self._put([-1 - t for t in ids])]
        raw = self._put(ids)
        return torch.where(raw >= 0, raw, self._future[(-raw - 1).clamp_min(0)])

    @property
    def busy(self) -> bool:
        """Requests to run, or a step whose tokens are not recorded yet."""
        return self.scheduler.has_work or self._in_flight is not None

    def _launch(self, batch: ScheduledBatch) -> _InFlight:
        """Queue the step on the device: forward, sample, tokens into the future buffer and
        a non-blocking copy to the host; mark the scheduler's requests."""
        logits = self._logits(batch)
        sampling = [i for i, w in enumerate(batch.work) if w.samples]
        reqs = [batch.work[i].req for i in sampling]
        if len(sampling) != len(batch.work):  # a python-list index would copy and sync
            logits = logits[self._put(sampling)]
        n = len(reqs)
        if self._next_future + n > self._future.numel():  # keep each step's run contiguous
            self._next_future = 0
        first = self._next_future
        slots = list(range(first, first + n))
        self._next_future += n
        host = torch.empty(n, dtype=torch.int64, pin_memory=self.device.type == "cuda")
        if n:
            if all(r.params.greedy for r in reqs):  # no sampling tensors to build
                tokens = logits.argmax(dim=-1)
            else:
                sb = SamplingBatch.build([r.params for r in reqs], logits.size(-1),
                                         self.device,
                                         [self.args.seed * 1_000_003 + r.rid for r in reqs])
                tokens = sample(logits, sb, self._put([r.generated for r in reqs]))
            self._future[first:first + n].copy_(tokens)
            host.copy_(tokens, non_blocking=True)
        wants = tuple(r.params.logprobs for r in reqs)
        lp_host = None
        if any(k is not None for k in wants):
            top = max(k or 0 for k in wants)
            lp_host = tuple(t.to("cpu", non_blocking=True) for t in
                            token_logprobs(logits, tokens, top))
        event = torch.cuda.Event() if self.device.type == "cuda" else None
        if event is not None:
            event.record()
        self.scheduler.launched(batch, [-(1 + k) for k in slots])
        return _InFlight(batch, host, event, lp_host, wants)

    def _resolve(self, step: _InFlight) -> list[RequestDelta]:
        if step.event is not None:
            step.event.synchronize()
        entries = None
        if step.logprobs is not None:
            chosen, values, ids = (t.tolist() for t in step.logprobs)
            entries = [None if k is None else (chosen[i], list(zip(ids[i][:k], values[i][:k],
                                                                   strict=True)))
                       for i, k in enumerate(step.wants)]
        return self.scheduler.resolve(step.batch, step.tokens.tolist(), entries)

    def step(self) -> list[RequestDelta]:
        """Run one step; returns a delta for each request that got a token or finished.
        With overlap, the step scheduled now runs on the device while the previous step's
        tokens are read back and recorded (they are the ones reported)."""
        batch = self.scheduler.schedule()
        launched = self._launch(batch) if batch is not None else None
        deltas: list[RequestDelta] = []
        if self.args.disable_overlap_schedule:
            if launched is not None:
                deltas = self._resolve(launched)
        else:
            if self._in_flight is not None:
                deltas = self._resolve(self._in_flight)
            self._in_flight = launched
        if not self._warm:  # the first step allocated what the loop keeps: freeze it
            self._warm = True
            if self.args.gc_freeze:
                freeze_after_warmup()
        return deltas

    def warmup(self) -> None:
        """A short unmeasured generation (three prompt lengths, four tokens each): kernels
        compile and the garbage collector freezes before the first real request."""
        gen = torch.Generator().manual_seed(self.args.seed)
        longest = self.reqs.max_pages * self.args.page_size - 8
        prompts = [torch.randint(0, self.config.vocab_size, (max(1, min(n, longest)),),
                                 generator=gen).tolist() for n in (3, 40, 300)]
        self.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0.0,
                                              ignore_eos=True))

    # ---- requests -----------------------------------------------------------------------
    def add_request(self, prompt: Sequence[int], params: SamplingParams) -> Request:
        """Queue a request (token ids). One that can never run comes back finished:
        finish_reason REJECTED, the reason in finish_detail (no delta reports it)."""
        return self.scheduler.new_request(prompt, params, self.config.eos_token_ids)

    def abort(self, req: Request) -> None:
        """Finish the request now (finish_reason ABORT) and free its memory; tokens of its
        steps still in flight are dropped (no delta reports it)."""
        self.scheduler.abort(req)

    @property
    def max_context(self) -> int:
        """Tokens per request at most (prompt + max_new_tokens)."""
        return self.scheduler.max_context

    def stats(self) -> EngineStats:
        s = self.scheduler
        return EngineStats(len(s.waiting), len(s.running) + (s.prefilling is not None),
                           self.kv.usage())

    # ---- offline API --------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]],
                 params: SamplingParams | Sequence[SamplingParams]) -> list[GenerateOutput]:
        """Generate for every prompt (token ids); outputs in prompt order. Rejected
        requests come back with their reason and no tokens."""
        plist = [params] * len(prompts) if isinstance(params, SamplingParams) else list(params)
        if len(plist) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(plist)} sampling params")
        reqs = [self.add_request(p, sp) for p, sp in zip(prompts, plist, strict=True)]
        while self.busy:
            self.step()
        return [GenerateOutput(r.rid, r.prompt, r.output, r.finish_reason or FinishReason.ABORT,
                               r.finish_detail) for r in reqs]
