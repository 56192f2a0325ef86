"""A step's inputs as host lists: what the model runner needs to run one scheduled batch.

Built once per step from the scheduler's batch (`step_inputs`), then handed to the model
runner, which copies them to the device without a sync. Plain data only (no requests, no
pools), so one rank can hand them to the others under tensor parallelism.
"""

from __future__ import annotations

from dataclasses import dataclass

from .kv_pool import ReqToTokenPool
from .logit_adjust import HistoryReset
from .sampling import SamplingParams
from .scheduler import Request, ScheduledBatch


@dataclass(frozen=True)
class StepInputs:
    decode: bool  # one token per request (graph replays apply), else a prefill step
    # per token
    input_ids: list[int]  # a negative id is a placeholder: a token of a step in flight
    positions: list[int]
    cache_loc: list[int]  # KV slot each token's K and V are written to
    # per work item (request)
    logits_rows: list[int]  # its last token's row
    q_lens: list[int]  # tokens computed in this step
    kv_lens: list[int]  # tokens in its cache after this step
    req_slots: list[int]  # its page-table row
    # per work item that samples a token, in order
    sample_rows: list[int]  # which work items (logits rows) sample
    sampling: list[SamplingParams]
    rids: list[int]  # request ids (the seed of unseeded sampling)
    steps: list[int]  # tokens the request generated before this one (the noise counter)
    # ids it may not sample in this step (EOS and stop ids while short of min_new_tokens)
    masked_stops: list[tuple[int, ...]]
    # penalized requests admitted in this step: their slot's token history is rebuilt
    history_resets: list[HistoryReset]

    @property
    def samples_all(self) -> bool:
        return len(self.sample_rows) == len(self.logits_rows)


def step_inputs(batch: ScheduledBatch, req_pool: ReqToTokenPool, page_size: int
                ) -> StepInputs:
    """The host inputs of `batch`; tokens still in flight stay placeholders (read on the
    device by the model runner)."""
    if batch.reqs is not None:
        return _decode_inputs(batch.mode == "decode", batch.reqs, batch.starts, req_pool.pages,
                              page_size)
    ids: list[int] = []
    pos: list[int] = []
    loc: list[int] = []
    rows, q_lens, kv_lens, slots = [], [], [], []
    sample_rows, params, rids, steps = [], [], [], []
    masked: list[tuple[int, ...]] = []
    resets: list[HistoryReset] = []
    pages = req_pool.pages
    for i, w in enumerate(batch.work):
        r, start, p = w.req, w.start, w.req.params
        assert r.slot is not None
        if p.penalized and start == r.cached_at_admission:  # its first work
            resets.append(_history_reset(r))
        end = start + w.count
        if w.count == 1:  # a decode row: one token, no list building (a step has 1000s)
            ids.append(r.token_slice(start, end)[0])
            pos.append(start)
            loc.append(pages[r.slot][start // page_size] * page_size + start % page_size)
        else:
            ids += r.token_slice(start, end)
            pos += range(start, end)
            loc += req_pool.slots_for(r.slot, start, end, page_size)
        rows.append(len(ids) - 1)
        q_lens.append(w.count)
        kv_lens.append(end)
        slots.append(r.slot)
        if w.samples:
            generated = r.generated
            sample_rows.append(i)
            params.append(p)
            rids.append(r.rid)
            steps.append(generated)
            masked.append(_masked_stops(r) if generated < p.min_new_tokens else ())
    return StepInputs(batch.mode == "decode", ids, pos, loc, rows, q_lens, kv_lens, slots,
                      sample_rows, params, rids, steps, masked, resets)


def _decode_inputs(decode: bool, reqs: list[Request], starts: list[int],
                   pages: dict[int, list[int]], page_size: int) -> StepInputs:
    """`step_inputs` of a decode batch kept as parallel lists (every request computes the
    token at its start position and samples): the same lists, with the per-row calls
    inlined and the per-row constants built whole."""
    n = len(reqs)
    slots = [r.slot for r in reqs]
    assert None not in slots
    params = [r.params for r in reqs]
    ids: list[int] = []
    loc: list[int] = []
    steps: list[int] = []
    masked: list[tuple[int, ...]] = []
    resets: list[HistoryReset] = []
    add_id, add_loc, add_step, add_masked = ids.append, loc.append, steps.append, \
        masked.append
    for r, start, slot, p in zip(reqs, starts, slots, params, strict=True):
        if start == r.cached_at_admission and p.penalized:  # its first work
            resets.append(_history_reset(r))
        # r.token_slice(start, start + 1)[0] and r.generated, inlined
        prompt, output, in_flight = r.prompt, r.output, r._in_flight
        k = start - len(prompt)
        if k < 0:
            add_id(prompt[start])
        else:
            add_id(output[k] if k < len(output) else in_flight[k - len(output)])
        add_loc(pages[slot][start // page_size] * page_size + start % page_size)
        generated = len(output) + len(in_flight)
        add_step(generated)
        add_masked(_masked_stops(r) if generated < p.min_new_tokens else ())
    return StepInputs(decode, ids, list(starts), loc, list(range(n)), [1] * n,
                      [s + 1 for s in starts], slots, list(range(n)), params,
                      [r.rid for r in reqs], steps, masked, resets)


def _masked_stops(r: Request) -> tuple[int, ...]:
    p = r.params
    return tuple(sorted(set(p.stop_token_ids) | (set() if p.ignore_eos else set(r.eos_ids))))


def _history_reset(r: Request) -> HistoryReset:
    """The request's tokens so far; the prompt only when the repetition penalty reads it."""
    n = len(r.prompt)
    prompt = r.prompt if r.params.repetition_penalty != 1.0 else []
    return HistoryReset(r.slot, prompt, r.token_slice(n, r.seq_len))
