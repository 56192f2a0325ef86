"""Steps driven by hand: a scheduler step recorded at once (launch then resolve, no
overlap), for tests that use no engine; and an engine's steps launched one by one under
the CUDA sync check."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fuseinfer.runtime.engine import Engine
from fuseinfer.runtime.scheduler import ScheduledBatch, Scheduler
from fuseinfer.runtime.step_output import RequestDelta


def record_step(sched: Scheduler, batch: ScheduledBatch, tokens: Sequence[int]
                ) -> list[RequestDelta]:
    """Record a step's sampled tokens (one per work item that samples, in order)."""
    sched.launched(batch, [-1] * sum(w.samples for w in batch.work))
    return sched.resolve(batch, tokens)


def run_launches_without_syncs(engine: Engine) -> None:
    """Run the engine's work to the end one step at a time, each step's launch under
    `torch.cuda.set_sync_debug_mode("error")`: a launch that waits for the GPU raises (a
    sync would stall the CPU behind the step in flight and undo overlap scheduling)."""
    runner, sched = engine.runner, engine.scheduler
    while sched.has_work:
        batch = sched.schedule()
        torch.cuda.set_sync_debug_mode("error")
        try:
            step = runner.launch(engine.inputs_for(batch))
            sched.launched(batch, step.placeholders)
        finally:
            torch.cuda.set_sync_debug_mode(0)
        result = runner.resolve(step)
        sched.resolve(batch, result.tokens, result.logprobs)
