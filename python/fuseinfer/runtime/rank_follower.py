"""The ranks of a tensor-parallel engine other than 0: each builds its shard's model runner
and runs every step rank 0's engine broadcasts, in order, until the engine closes.

Rank 0 schedules. Per step it broadcasts a `StepMessage`: the page-table changes made
since the last one (its pool's journal) and the step's host inputs. Every rank then runs
the same forward over its shard; the collectives inside keep them in lockstep, and each
rank samples the same tokens from the same gathered logits, so the placeholder tokens a
later step reads from each rank's future buffer agree. Only rank 0 reads tokens back.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..distributed.collectives import broadcast_object
from ..distributed.parallel_state import ParallelState
from .engine_args import EngineArgs
from .host_inputs import StepInputs


@dataclass(frozen=True)
class StepMessage:
    page_ops: list[tuple]  # ReqToTokenPool journal entries since the previous step
    inputs: StepInputs


def follow_steps(args: EngineArgs, parallel: ParallelState) -> int:
    """Run rank `parallel.rank`'s share of every step until rank 0 closes its engine (a
    None message); returns the number of steps run."""
    from .model_runner import ModelRunner

    if parallel.is_first:
        raise ValueError("follow_steps is for ranks other than 0; rank 0 runs the Engine")
    runner = ModelRunner(args, parallel)
    steps = 0
    try:
        while True:
            message = broadcast_object(None, parallel)
            if message is None:
                return steps
            assert isinstance(message, StepMessage)
            runner.req_pool.replay(message.page_ops)
            runner.resolve(runner.launch(message.inputs))
            steps += 1
    finally:
        runner.close()
