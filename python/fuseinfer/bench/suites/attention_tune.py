"""`fuseinfer tune attention`: pick the attention kernels' block sizes on the present GPU and
write them into its dispatch table.

Prefill: per head dim, every (block_m, block_n, warps, stages, tma) candidate on a causal
4k prefill of a model with that head dim, and on sm_90 the warp-specialized kernel at
block_n 64 and 128 with 2-4 tiles in flight (those that fit), pingpong and persistent off
and on; the fastest wins, and a persistent winner is timed on four 2k requests with and
without the plan's dealt schedule (longest_first), keeping the faster (where the plan deals
that batch's tiles on this GPU at all). Decode: per head dim, the (block_n, warps, stages)
with the lowest geometric-mean time over a small-batch long-KV shape and a large-batch
shape, then 2 or 4 KV heads per program with its loop (its warps and 8), then the CUDA
kernel at 4 and 8 warps (each also with the split count aimed at the programs an SM holds
of it: rule field ctas_per_sm); where the small and the large batch's fastest differ, the
small one's becomes a rule for batches up to SMALL_BATCH. `decode-fp8` does the same on FP8
caches for the FP8 rules. Splits: (min_chunk, target_ctas_per_sm), shared by every head
dim, over small-batch shapes (where splitting matters). Merge: decode with the pieces
merged by the last one (no merge kernel) against the merge kernel, on windows that bound a
request to 2, 4, 8, 16 pieces, for both tuned models at both decode shapes;
fused_merge_window_pieces becomes the largest count up to which the fused merge wins
(geometric mean) at every count tried, 0 where it never does. `--kinds` and `--head-dims`
pick parts, the rest of the entry kept (each candidate compiles: about 4 s apiece on an
H200, so the decode blocks of one head dim take about 2 minutes; --log is rewritten after
every candidate, so a cut run keeps its timings, and `--resume LOG` takes them back instead
of timing those candidates again). Head dim 256 keeps the built-in rules (no model of ours
uses it). Candidates that fail to compile (shared memory) are skipped. Timed like
`fuseinfer bench attention`."""

from __future__ import annotations

import argparse
import itertools
import json
import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch

from ...ops.attention.dispatch import (
    ATTENTION_BUILTIN,
    AttentionDispatch,
    DecodeLaunchRule,
    PrefillLaunchRule,
)
from ...ops.attention.plan import AttentionShape, PagedAttention
from ..progress import Progress
from ..timing import TimingConfig, time_calls
from ..tuning import tune_target, write_tune_log
from .attention import MODELS, Case, make_inputs, ours

TUNE_MODELS = {64: "GPT-OSS", 128: "Llama-3-8B"}
PREFILL_CANDIDATES = list(itertools.product((64, 128), (64, 128), (4, 8), (2, 3),
                                            (True, False)))
# the sm_90a kernel: query tile (128 rows over 8 warps; 192 over 12 at head_dim 64) x key
# block x K/V tiles in flight (those that fit its shared memory at the head dim) x pingpong
# off/on x persistent off/on; tried on sm_90 GPUs only
HOPPER_PREFILL_CANDIDATES = [(block_m, block_n, block_m // 16, stages, True, "hopper",
                              pingpong, persistent)
                             for block_m in (128, 192) for block_n in (64, 128)
                             for stages in (2, 3, 4) for pingpong in (False, True)
                             for persistent in (False, True)]
# a persistent winner is timed again here with the plan's dealt schedule (longest_first)
# off and on: it changes nothing on one long request, which the candidates are timed on
RAGGED_PREFILL = "4x2k"
DECODE_CANDIDATES = list(itertools.product((32, 64, 128), (2, 4, 8), (2, 3, 4)))
# an FP8 key row is half the bytes: longer blocks keep as many in flight
FP8_DECODE_CANDIDATES = list(itertools.product((64, 128, 256), (2, 4, 8), (2, 3, 4)))
DECODE_SHAPES = ((1, 8192), (64, 4096))  # (batch, KV length): a small and a large batch
SMALL_BATCH = 16  # batches up to this take the small shape's winner
KV_HEADS_PER_PROGRAM = (2, 4)  # tried with the best loop (1 is the loop search's)
# the CUDA decode kernel, tried after the Triton search: (warps, ctas_per_sm), None the
# entry's split target; an SM holds two of its 4-warp programs at head_dim 128 (about 200
# registers), one of 8 warps, so the split count can aim at that instead of Triton's
# the CUDA kernel: (warps, ring stages, programs per SM for the split count or None)
CUDA_DECODE_CANDIDATES = ((4, 2, None), (4, 4, None), (4, 3, 2), (4, 4, 2), (8, 3, None),
                          (8, 3, 1))
SPLIT_CANDIDATES = list(itertools.product((64, 128, 256, 512), (1, 2, 4)))
SPLIT_SHAPES = ((1, 4096), (1, 16384), (8, 4096))
MERGE_PIECES = (2, 4, 8, 16)  # windows of (pieces - 1) x min_chunk keys: at most that many
PAGE_SIZE = 64
CONFIG = TimingConfig(repeats=7, target_graph_ms=1.0)


def _time(case: Case, table: AttentionDispatch, block_m: int | None = None,
          fp8: bool = False) -> float:
    """Median us of our kernel for `case` under `table` (fp8: on an FP8 cache with a scale
    per KV head); inf if it fails to build."""
    x = make_inputs(case, PAGE_SIZE, torch.bfloat16, fp8=fp8, table=table)  # planned on it
    m = case.model
    if case.kind == "prefill":  # again with the candidate's block_m
        x.plan = x.attn.plan_prefill(list(case.q_lens), list(case.kv_lens), x.kv.page_table,
                                     block_m=block_m)
    try:
        return time_calls([ours(x, window_left=m.window_left)], CONFIG).median_us
    except Exception as err:  # out of shared memory / registers: not a candidate
        if "OutOfResources" not in type(err).__name__ and "out of resource" not in str(err):
            raise
        return math.inf


def _with_rule(table: AttentionDispatch, head_dim: int, **rules: Any) -> AttentionDispatch:
    """The table with one head dim's rules replaced (rules ordered by max_head_dim): a
    tuple of fields after max_head_dim gives one rule, a list of rules gives them in order
    (a small-batch rule before its catch-all)."""
    out = {}
    for kind, rule in rules.items():
        cls = PrefillLaunchRule if kind == "prefill_rules" else DecodeLaunchRule
        # FP8 rules start as a copy of the decode rules (the other head dims keep theirs)
        old = getattr(table, kind) or table.decode_rules
        kept = [r for r in old if r.max_head_dim is not None and r.max_head_dim != head_dim]
        new = list(rule) if isinstance(rule, list) else [cls(head_dim, *rule)]
        last = [r for r in old if r.max_head_dim is None]
        # a stable sort: each head dim's rules keep their order
        out[kind] = tuple(sorted(kept + new, key=lambda r: r.max_head_dim)) + tuple(last)
    return replace(table, **out)


def _geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


KINDS = ("prefill", "decode", "decode-fp8", "splits", "merge")
DEFAULT_KINDS = ("prefill", "decode", "splits", "merge")  # decode-fp8 only when asked


def _timing_key(kind: str, head_dim: int | None, candidate: Any) -> tuple:
    return kind, head_dim, json.dumps(list(candidate))


class _Log(list):
    """The timings taken so far; `saved` (if given) is called with them after each one,
    so a run cut short keeps what it measured. `resumed`: an earlier run's timings, taken
    back (and logged again) instead of timing those candidates."""

    def __init__(self, saved: Callable[[list[dict[str, Any]]], None] | None,
                 resumed: list[dict[str, Any]] = ()) -> None:
        super().__init__()
        self.saved = saved
        self.resumed = {_timing_key(e["kind"], e.get("head_dim"), e["candidate"]): e["us"]
                        for e in resumed}

    def timed(self, kind: str, head_dim: int | None, candidate: Any,
              measure: Callable[[], Any]) -> Any:
        """The candidate's time(s): the resumed run's if it has them, else measured."""
        us = self.resumed.get(_timing_key(kind, head_dim, candidate))
        if us is None:
            us = measure()
        where = {} if head_dim is None else {"head_dim": head_dim}  # splits have none
        self.append({"kind": kind, **where, "candidate": candidate, "us": us})
        return us

    def append(self, entry: dict[str, Any]) -> None:
        super().append(entry)
        if self.saved is not None:
            self.saved(list(self))


def tune(device: int, kinds: tuple[str, ...] = DEFAULT_KINDS,
         start: AttentionDispatch = ATTENTION_BUILTIN,
         head_dims: tuple[int, ...] = tuple(TUNE_MODELS),
         saved: Callable[[list[dict[str, Any]]], None] | None = None,
         resumed: list[dict[str, Any]] = ()
         ) -> tuple[AttentionDispatch, list[dict[str, Any]]]:
    """Tune the given kinds (the prefill and decode blocks for `head_dims`; the decode
    split policy over every tuned model), starting from (and keeping the rest of)
    `start`. Each kind and head dim alone fits one device call of a few minutes. `saved`
    gets the timings so far after each candidate; `resumed` (an earlier run's log) gives
    timings not taken again."""
    torch.cuda.set_device(device)
    table = start
    log = _Log(saved, resumed)
    after_loop = 2 * len(KV_HEADS_PER_PROGRAM) + len(CUDA_DECODE_CANDIDATES)  # per decode part
    # the sm_90a candidates, and at most two ragged timings of a persistent winner
    prefill = {d: len(PREFILL_CANDIDATES) + len(_hopper_candidates(d))
               + 2 * bool(_hopper_candidates(d)) for d in head_dims}
    steps = sum(prefill.values()) * ("prefill" in kinds) \
        + len(head_dims) * ((len(DECODE_CANDIDATES) + after_loop) * ("decode" in kinds)
                            + (len(FP8_DECODE_CANDIDATES) + after_loop)
                            * ("decode-fp8" in kinds)) \
        + len(SPLIT_CANDIDATES) * ("splits" in kinds) \
        + 2 * len(MERGE_PIECES) * ("merge" in kinds)
    with Progress(steps, "tune attention") as progress:
        for head_dim in head_dims:
            model = MODELS[TUNE_MODELS[head_dim]]
            if "prefill" in kinds:
                table = _tune_prefill(table, head_dim, model, log, progress)
            if "decode" in kinds:
                table = _tune_decode(table, head_dim, model, log, progress)
            if "decode-fp8" in kinds:
                table = _tune_decode(table, head_dim, model, log, progress, fp8=True)
        if "splits" in kinds:
            table = _tune_splits(table, log, progress)
        if "merge" in kinds:
            table = _tune_merge(table, log, progress)
    return table, log


def _tune_prefill(table: AttentionDispatch, head_dim: int, m: Any, log: _Log, progress: Any
                  ) -> AttentionDispatch:
    """The fastest portable candidate, then the sm_90a kernel's; where one of those wins,
    the head dim's rules are it and the portable winner after it (its fallback: narrow
    windows, FP8 caches)."""
    case = Case("prefill", m, "1x4k", (4096,), (4096,))

    def fastest(candidates: list[tuple]) -> tuple[float, tuple] | None:
        best = None
        for cand in candidates:
            progress.step(f"prefill d={head_dim} {cand}")
            trial = _with_rule(table, head_dim, prefill_rules=cand)
            us = log.timed("prefill", head_dim, cand,
                           lambda t=trial, m=cand[0]: _time(case, t, block_m=m))
            if best is None or us < best[0]:
                best = (us, cand)
        return best

    portable = fastest(PREFILL_CANDIDATES)
    hopper = fastest(_hopper_candidates(head_dim))
    if hopper is None or hopper[0] >= portable[0]:
        return _with_rule(table, head_dim, prefill_rules=portable[1])
    fallback = PrefillLaunchRule(head_dim, *portable[1])
    winner = PrefillLaunchRule(head_dim, *hopper[1])

    def with_winner(dealt: bool) -> AttentionDispatch:
        return _with_rule(table, head_dim, prefill_rules=[
            replace(winner, longest_first=dealt), fallback])

    ragged = Case("prefill", m, RAGGED_PREFILL, (2048,) * 4, (2048,) * 4)
    # the dealt schedule only changes ragged batches: timed on one, where the plan deals
    # its tiles on this GPU (elsewhere both timings would be the same launch)
    if winner.persistent and _plan_deals(ragged, with_winner(True)):
        times = {}
        for dealt in (False, True):
            cand = (*hopper[1], dealt)
            progress.step(f"prefill d={head_dim} {RAGGED_PREFILL} {cand}")
            times[dealt] = log.timed(  # measured at once, inside timed
                "prefill-ragged", head_dim, cand,
                lambda d=dealt: _time(ragged, with_winner(d), block_m=winner.block_m))
        winner = replace(winner, longest_first=times[True] < times[False])
    return _with_rule(table, head_dim, prefill_rules=[winner, fallback])


def _sm_count() -> int:
    return torch.cuda.get_device_properties(torch.cuda.current_device()).multi_processor_count


def _plan_deals(case: Case, table: AttentionDispatch) -> bool:
    """Whether the plan deals this prefill's tiles (planned on the host, this GPU's SMs)."""
    m = case.model
    attn = PagedAttention(AttentionShape(m.q_heads, m.kv_heads, m.head_dim, PAGE_SIZE),
                          "cpu", table=table)
    attn.sm_count = _sm_count()
    pages = -(-max(case.kv_lens) // PAGE_SIZE)
    table_rows = torch.zeros(len(case.kv_lens), pages, dtype=torch.int32)
    return attn.plan_prefill(list(case.q_lens), list(case.kv_lens), table_rows).schedule \
        is not None


def _hopper_candidates(head_dim: int) -> list[tuple]:
    """The sm_90a kernel's candidates that fit at this head dim; none off sm_90."""
    from ...ops.attention.prefill_hopper import HEAD_DIMS, hopper_rule_problem

    if head_dim not in HEAD_DIMS or not torch.cuda.is_available() \
            or torch.cuda.get_device_capability() != (9, 0):
        return []
    return [c for c in HOPPER_PREFILL_CANDIDATES
            if hopper_rule_problem(PrefillLaunchRule(head_dim, *c)) is None]


def _tune_decode(table: AttentionDispatch, head_dim: int, m: Any, log: _Log, progress: Any,
                 fp8: bool = False) -> AttentionDispatch:
    """The loop's (block_n, warps, stages) first, then KV heads per program with the
    winning loop (where the model's KV heads divide), then the CUDA kernel. fp8: the FP8
    cache's rules, timed on FP8 caches."""
    kind, rules = ("decode-fp8", "fp8_decode_rules") if fp8 else ("decode", "decode_rules")

    timed: list[tuple[list[float], tuple]] = []  # (us per DECODE_SHAPES, candidate)

    def score(cand: tuple) -> float:
        progress.step(f"{kind} d={head_dim} {cand}")
        trial = _with_rule(table, head_dim, **{rules: cand})
        times = log.timed(kind, head_dim, cand, lambda: [
            _time(Case("decode", m, f"{b}x{n}", (1,) * b, (n,) * b), trial, fp8=fp8)
            for b, n in DECODE_SHAPES])
        timed.append((times, cand))
        return _geomean(times)

    first = lambda pair: pair[0]  # noqa: E731 (candidates mix ints and a kernel name)
    best = min(((score(c), c) for c in (FP8_DECODE_CANDIDATES if fp8 else DECODE_CANDIDATES)),
               key=first)
    block_n, warps, stages = best[1][:3]
    # a program reading more heads holds more: with the winner's warps and with 8 (ptxas
    # for sm_90a: 2 heads of 64 at 4 warps spill, at 8 they do not)
    for per_program in KV_HEADS_PER_PROGRAM:
        for w in dict.fromkeys((warps, max(warps, 8))):
            cand = (block_n, w, stages, per_program)
            if m.kv_heads % per_program == 0:
                score(cand)
    # the CUDA kernel (csrc/attention): its warps, ring stages and split target, the
    # winner's split alignment (fields after the kernel: max_batch, ctas_per_sm)
    for w, ring, ctas in CUDA_DECODE_CANDIDATES:
        score((block_n, w, ring, 1, "cuda") + (() if ctas is None else (None, ctas)))
    # every candidate was timed at both shapes: the small batch's fastest serves batches up
    # to SMALL_BATCH, the large batch's every other batch (one rule when they agree)
    small = min(timed, key=lambda t: t[0][0])[1]
    large = min(timed, key=lambda t: t[0][1])[1]
    if small == large:
        return _with_rule(table, head_dim, **{rules: large})
    return _with_rule(table, head_dim, **{rules: [
        replace(DecodeLaunchRule(head_dim, *small), max_batch=SMALL_BATCH),
        DecodeLaunchRule(head_dim, *large)]})


def _tune_splits(table: AttentionDispatch, log: _Log, progress: Any) -> AttentionDispatch:
    best = None
    for chunk, ctas in SPLIT_CANDIDATES:
        progress.step(f"decode splits min_chunk={chunk} ctas/sm={ctas}")
        trial = replace(table, min_chunk=chunk, target_ctas_per_sm=ctas)
        times = log.timed("splits", None, [chunk, ctas], lambda t=trial: [
            _time(Case("decode", MODELS[name], f"{b}x{n}", (1,) * b, (n,) * b), t)
            for name in TUNE_MODELS.values() for b, n in SPLIT_SHAPES])
        score = _geomean(times)
        if best is None or score < best[0]:
            best = (score, (chunk, ctas))
    return replace(table, min_chunk=best[1][0], target_ctas_per_sm=best[1][1])


def _tune_merge(table: AttentionDispatch, log: _Log, progress: Any) -> AttentionDispatch:
    """fused_merge_window_pieces: for each piece count, both tuned models at both decode
    shapes on a window that bounds a request to that many pieces (window_left (pieces - 1)
    x min_chunk, so ceil((window_left + block_n) / min_chunk) = pieces while block_n <=
    min_chunk), merged by the last piece (the table fusing every window) and by the merge
    kernel; counts are taken in order while the fused merge wins (the Progress total
    counts every count, so a run that stops early ends below it)."""
    kept = 0
    for pieces in MERGE_PIECES:
        window = (pieces - 1) * table.min_chunk
        cases = [Case("decode", replace(MODELS[name], window_left=window), f"{b}x{n}",
                      (1,) * b, (n,) * b)
                 for name in TUNE_MODELS.values() for b, n in DECODE_SHAPES]
        times = {}
        for fused in (0, 1):
            progress.step(f"merge pieces={pieces} {'fused' if fused else 'merge kernel'}")
            trial = replace(table, fused_merge_window_pieces=256 if fused else 0)
            # keyed by the window too: a resumed log from another min_chunk is not reused
            times[fused] = log.timed("merge", None, [pieces, window, fused],
                                     lambda t=trial, c=cases: [
                _time(case, t) for case in c])
        if _geomean(times[1]) >= _geomean(times[0]):
            break  # larger counts are not tried once one loses
        kept = pieces
    return replace(table, fused_merge_window_pieces=kept)


def tune_command(args: argparse.Namespace) -> int:
    """`fuseinfer tune attention`: tune the asked kernels from the table's current entry,
    write it, report."""
    from ...dispatch import lookup

    target = tune_target(args)
    kinds = tuple(k for k in KINDS if k in (args.kinds or DEFAULT_KINDS))
    head_dims = tuple(sorted(set(args.head_dims or TUNE_MODELS)))
    start = lookup("attention", target.identity).entry
    dims = "" if head_dims == tuple(TUNE_MODELS) else \
        f" (head dim {'/'.join(map(str, head_dims))})"

    def partial(log: list[dict[str, Any]]) -> None:  # the log so far, rewritten per timing
        write_tune_log(args.log, f"unfinished: tune attention {' '.join(kinds)}{dims}", log)

    resumed = json.loads(args.resume.read_text())["timings"] if args.resume else []
    table, log = tune(target.device, kinds, start, head_dims, partial, resumed)
    done = {"prefill": f"prefill 1x4k causal{dims}", "decode": f"decode {DECODE_SHAPES}{dims}",
            "decode-fp8": f"FP8-cache decode {DECODE_SHAPES}{dims}",
            "splits": f"splits over {SPLIT_SHAPES}",
            "merge": f"fused merge on windows of {MERGE_PIECES} pieces"}
    source = target.source(f", page size {PAGE_SIZE}; " + "; ".join(done[k] for k in kinds))
    if (kinds != DEFAULT_KINDS or dims) and start.source.startswith("tuned"):
        source += f"; kept from before: {start.source.split('; kept from before: ')[-1]}"
    table = replace(table, source=source)
    target.write("attention", table)
    for r in table.prefill_rules:
        print(f"  prefill head_dim <= {r.max_head_dim}: block {r.block_m}x{r.block_n}, "
              f"{r.num_warps} warps, {r.num_stages} stages"
              + (", the sm_90a kernel" if r.kernel == "hopper" else ""))
    for name, rules in (("decode", table.decode_rules),
                        ("FP8-cache decode", table.fp8_decode_rules)):
        for r in rules:
            batches = "" if r.max_batch is None else f", batch <= {r.max_batch}"
            if r.ctas_per_sm is not None:
                batches += f", splits for {r.ctas_per_sm} programs per SM"
            print(f"  {name} head_dim <= {r.max_head_dim}{batches}: {r.kernel} kernel, block_n "
                  f"{r.block_n}, {r.num_warps} warps, {r.num_stages} stages, "
                  f"{r.kv_heads_per_program} KV head(s) per program")
    print(f"  decode splits: min_chunk {table.min_chunk}, {table.target_ctas_per_sm} "
          "programs per SM")
    print(f"  fused merge on windows of at most {table.fused_merge_window_pieces} pieces"
          if table.fused_merge_window_pieces else "  fused merge: never (the merge kernel)")
    print(f"wrote {target.output}")
    write_tune_log(args.log, source, log)
    return 0
