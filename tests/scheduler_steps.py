"""A scheduler step recorded at once (launch then resolve, no overlap): what tests that
drive the scheduler by hand use instead of an engine."""

from __future__ import annotations

from collections.abc import Sequence

from fuseinfer.runtime.scheduler import ScheduledBatch, Scheduler
from fuseinfer.runtime.step_output import RequestDelta


def record_step(sched: Scheduler, batch: ScheduledBatch, tokens: Sequence[int]
                ) -> list[RequestDelta]:
    """Record a step's sampled tokens (one per work item that samples, in order)."""
    sched.launched(batch, [-1] * sum(w.samples for w in batch.work))
    return sched.resolve(batch, tokens)
