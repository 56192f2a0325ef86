"""The engine: the step loop that joins the scheduler (host: which requests run, their
memory) and the model runner (device: forward, sampling). With overlap scheduling (the
default) step N+1 is queued on the device before step N's tokens are read back, so the
host prepares the next step while the device runs the current one. CPU or CUDA.

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

from ..distributed.collectives import broadcast_object
from ..distributed.parallel_state import SINGLE_RANK, ParallelState
from .engine_args import EngineArgs
from .gc_control import GcPauseMonitor, freeze_after_warmup
from .host_inputs import StepInputs, step_inputs
from .kv_pool import PageAllocator
from .model_runner import InFlightStep, ModelRunner
from .radix_cache import RadixCache
from .rank_follower import StepMessage
from .sampling import SamplingParams
from .scheduler import Request, ScheduledBatch, Scheduler, SchedulerConfig
from .step_output import FinishReason, RequestDelta

__all__ = ["Engine", "EngineArgs", "EngineStats", "GenerateOutput"]


@dataclass(frozen=True)
class _Launched:
    batch: ScheduledBatch
    step: InFlightStep


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
    def __init__(self, args: EngineArgs, parallel: ParallelState = SINGLE_RANK) -> None:
        """On several ranks this is rank 0's engine: it schedules, and every step it makes
        is broadcast to the other ranks, which run `rank_follower.follow_steps`."""
        if not parallel.is_first:
            raise ValueError(f"the Engine runs on rank 0; rank {parallel.rank} runs "
                             "fuseinfer.runtime.rank_follower.follow_steps")
        self._ranks = None  # the ranks this engine spawned (args.tp > 1)
        self._in_launcher_group = False  # joined torchrun's group: leave it on close
        if args.tp > 1:
            if not parallel.is_single:
                raise ValueError("give either EngineArgs.tp or a ParallelState, not both")
            from .tensor_parallel_launch import join_launcher, launch_ranks, under_launcher

            if under_launcher(args):  # torchrun: ranks > 0 follow here, then exit
                parallel = join_launcher(args)
                self._in_launcher_group = True
            else:
                self._ranks = launch_ranks(args)
                parallel = self._ranks.parallel
        self.args = args
        self.parallel = parallel
        self.runner = ModelRunner(args, parallel)
        self.config = self.runner.config
        self.device = self.runner.device
        self.reqs = self.runner.req_pool
        if not parallel.is_single:  # page-table changes travel with the next step
            self.reqs.journal = []
        self.allocator = PageAllocator(self.runner.kv_cache.num_pages)
        self.cache = RadixCache(args.page_size, self.allocator.free,
                                disable=args.disable_radix_cache)
        self.scheduler = Scheduler(
            SchedulerConfig(args.max_running_requests, args.max_prefill_tokens,
                            args.chunked_prefill_size, args.schedule_policy),
            self.allocator, self.reqs, self.cache, args.page_size)
        self._warm = False
        self._closed = False
        self._in_flight: _Launched | None = None
        # The caller's garbage collector is left alone unless asked (EngineArgs.gc_*).
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
        if self._in_flight is not None and self._in_flight.step.event is not None:
            self._in_flight.step.event.synchronize()  # its kernels still use the buffers
        self._in_flight = None
        if not self._closed and not self.parallel.is_single:
            broadcast_object(None, self.parallel)  # the other ranks stop following
        self._closed = True
        self.runner.close()
        if self._ranks is not None:
            self._ranks.stop()
            self._ranks = None
        elif self._in_launcher_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self._in_launcher_group = False
        # the scheduler's pools hold the device page table: drop them with it
        self.scheduler = self.reqs = self.cache = self.allocator = None  # type: ignore

    # ---- one step -----------------------------------------------------------------------
    def inputs_for(self, batch: ScheduledBatch) -> StepInputs:
        """The host inputs of a scheduled batch, as the model runner takes them."""
        return step_inputs(batch, self.reqs, self.args.page_size)

    def _launch(self, batch: ScheduledBatch) -> _Launched:
        """Queue the step on the device and mark the scheduler's requests."""
        inputs = self.inputs_for(batch)
        if not self.parallel.is_single:
            assert self.reqs.journal is not None
            broadcast_object(StepMessage(list(self.reqs.journal), inputs), self.parallel)
            self.reqs.journal.clear()
        step = self.runner.launch(inputs)
        self.scheduler.launched(batch, step.placeholders)
        return _Launched(batch, step)

    def _resolve(self, launched: _Launched) -> list[RequestDelta]:
        result = self.runner.resolve(launched.step)
        return self.scheduler.resolve(launched.batch, result.tokens, result.logprobs)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the engine is closed")

    @property
    def busy(self) -> bool:
        """Requests to run, or a step whose tokens are not recorded yet."""
        if self._closed:
            return False
        return self.scheduler.has_work or self._in_flight is not None

    def flush_prefix_cache(self) -> None:
        """Drop every cached prefix and free its pages, e.g. between a warm-up and a
        measured workload (whose KV usage would otherwise include the warm-up's pages).
        Only while idle: a running request may hold cached pages."""
        self._check_open()
        if self.busy:
            raise RuntimeError("flush_prefix_cache: requests are running; flush when idle")
        self.cache.reset()

    def step(self) -> list[RequestDelta]:
        """Run one step; returns a delta for each request that got a token or finished.
        With overlap, the step scheduled now runs on the device while the previous step's
        tokens are read back and recorded (they are the ones reported)."""
        self._check_open()
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
        compile (and, with gc_freeze, the garbage collector freezes) before the first real
        request."""
        gen = torch.Generator().manual_seed(self.args.seed)
        longest = self.max_context - 8
        prompts = [torch.randint(0, self.config.vocab_size, (max(1, min(n, longest)),),
                                 generator=gen).tolist() for n in (3, 40, 300)]
        self.generate(prompts, SamplingParams(max_new_tokens=4, temperature=0.0,
                                              ignore_eos=True))

    # ---- requests -----------------------------------------------------------------------
    def add_request(self, prompt: Sequence[int], params: SamplingParams) -> Request:
        """Queue a request (token ids). One that can never run comes back finished:
        finish_reason REJECTED, the reason in finish_detail (no delta reports it), e.g. a
        token id outside the vocabulary."""
        self._check_open()
        return self.scheduler.new_request(prompt, params, self.config.eos_token_ids,
                                          self.config.vocab_size)

    def abort(self, req: Request) -> None:
        """Finish the request now (finish_reason ABORT) and free its memory; tokens of its
        steps still in flight are dropped (no delta reports it)."""
        self._check_open()
        self.scheduler.abort(req)

    @property
    def max_context(self) -> int:
        """Tokens per request at most (prompt + max_new_tokens)."""
        return self.scheduler.max_context

    def stats(self) -> EngineStats:
        self._check_open()
        s = self.scheduler
        return EngineStats(len(s.waiting), len(s.running) + (s.prefilling is not None),
                           self.allocator.usage())

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
