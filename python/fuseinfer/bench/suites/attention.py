"""`fuseinfer bench attention`: paged decode and prefill/extend (ops/attention/) on model
shapes, against torch SDPA and flex_attention on contiguous KV and FlashInfer on the same
paged KV (`fuseinfer tune attention`: their block sizes, in attention_tune.py).

Decode: batch x KV length, every request the same length, bf16 paged cache (page size 64
unless --page-size), pages scattered at random. Bytes counted: the KV each request can see
(window: the last window_left + 1 tokens), K and V, plus q and out. Prefill: causal, the
new tokens already in the cache; FLOPs counted: 4 * head_dim * q_heads per visible
(query, key) pair. Extra timings of our own kernel give what a feature costs: `sink cost`
is with sinks vs the same call without; `window cost` is window W over a long KV vs full
attention over a KV of W + 1 tokens (the same keys read). `--fp8-kv` adds, per decode
row, our kernel on an FP8 cache of the same shape with a scale per KV head (its time and
the bf16 time over it: the bytes halve, so a bandwidth-bound decode approaches 2x).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...ops import AttentionShape, PagedAttention
from ...ops.attention.reference import reference_paged_attention
from .. import attention_baselines as base
from ..attention_inputs import make_paged_kv
from ..cut import RunCut, cut_by_sigterm, cut_note
from ..gpu_clocks import clock_state
from ..kernel_suite import add_output_options, check_known, report_run
from ..prebuild import Build, run_builds
from ..progress import Progress
from ..registry import Suite, register_suite, tuner_in
from ..report import Column
from ..timing import TimingConfig, l2_cache_bytes, time_calls


@dataclass(frozen=True)
class Model:
    name: str
    q_heads: int
    kv_heads: int
    head_dim: int
    sinks: bool = False
    window_left: int | None = None


MODELS = {m.name: m for m in (
    Model("Llama-3-8B", 32, 8, 128),  # Qwen3-8B's attention has the same shape
    Model("Qwen3-0.6B", 16, 8, 128),  # GQA group 2
    Model("GPT-OSS", 64, 8, 64, sinks=True),
    # GPT-OSS's sliding layers: 128 tokens, the query's own included.
    Model("GPT-OSS-win128", 64, 8, 64, sinks=True, window_left=127),
)}
DECODE_BATCHES = (1, 8, 64, 256)
DECODE_LENGTHS = (1024, 4096, 16384, 65536)
# the split-KV target shape, and many short requests (a batch whose programs finish fast)
EXTRA_DECODE = ((1, 8192), (50, 300))
PREFILL = {  # name: (q_lens, kv_lens)
    "1x4k": ([4096], [4096]),
    "4x2k": ([2048] * 4, [2048] * 4),
    "1x16k": ([16384], [16384]),
    "extend 2k on 4k": ([2048], [6144]),
}
PREFILL_MODELS = ("Llama-3-8B", "GPT-OSS", "GPT-OSS-win128")
BASELINES = ("sdpa", "flex", "flashinfer")
MAX_KV_BYTES = 24 << 30  # larger decode shapes are skipped (the contiguous copy doubles it)

COLUMNS = [
    Column("kind", "kind", align="<"),
    Column("model", "model", align="<"),
    Column("shape", "shape", align="<"),
    Column("us", "us", "{:.1f}"),
    Column("tbps", "TB/s", "{:.2f}"),
    Column("tflops", "TFLOP/s", "{:.0f}"),
    Column("pct_ceiling", "% ceiling", "{:.1f}"),
    Column("vs_sdpa", "x sdpa", "{:.2f}"),
    Column("vs_flex", "x flex", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("feature_cost_pct", "sink cost %", "{:+.1f}"),
    Column("window_cost_pct", "window cost %", "{:+.1f}"),
    Column("splits", "splits"),
    Column("merge", "merge", align="<"),
    Column("fp8_us", "fp8 us", "{:.1f}"),
    Column("fp8_speedup", "x fp8", "{:.2f}"),
    Column("fused_us", "fused us", "{:.1f}"),
    Column("fused_speedup", "x fused", "{:.2f}"),
    Column("cuda_us", "cuda us", "{:.1f}"),
    Column("cuda_speedup", "x cuda", "{:.2f}"),
    Column("fp8_cuda_us", "fp8 cuda us", "{:.1f}"),
    Column("fp8_cuda_speedup", "x fp8 cuda", "{:.2f}"),
    Column("hopper_us", "hopper us", "{:.1f}"),
    Column("hopper_tflops", "hopper TFLOP/s", "{:.0f}"),
    Column("hopper_speedup", "x hopper", "{:.2f}"),
    Column("rel_err", "rel err", "{:.1e}"),
]


@dataclass(frozen=True)
class Case:
    kind: str  # "decode" or "prefill"
    model: Model
    shape: str
    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]


def decode_cases(models: Sequence[Model], batches: Sequence[int], lengths: Sequence[int],
                 extra: Sequence[tuple[int, int]] = EXTRA_DECODE) -> list[Case]:
    pairs = [(b, n) for b in batches for n in lengths] + list(extra)
    return [Case("decode", m, f"{b}x{n}", (1,) * b, (n,) * b) for m in models
            for b, n in dict.fromkeys(pairs)]


def prefill_cases(models: Sequence[Model], names: Sequence[str]) -> list[Case]:
    return [Case("prefill", m, name, tuple(PREFILL[name][0]), tuple(PREFILL[name][1]))
            for m in models for name in names]


def visible(q_len: int, kv_len: int, window_left: int | None) -> int:
    """(query, key) pairs the mask lets through for one request."""
    total = 0
    for p in range(kv_len - q_len, kv_len):
        lo = 0 if window_left is None else max(0, p - window_left)
        total += p + 1 - lo
    return total


def kv_bytes(case: Case, itemsize: int) -> int:
    m = case.model
    tokens = sum(n if m.window_left is None else min(n, m.window_left + 1)
                 for n in case.kv_lens)
    io = 2 * len(case.kv_lens) * m.q_heads * m.head_dim * itemsize
    return 2 * tokens * m.kv_heads * m.head_dim * itemsize + io


def flops(case: Case) -> int:
    m = case.model
    pairs = sum(visible(q, k, m.window_left) for q, k in zip(case.q_lens, case.kv_lens,
                                                              strict=True))
    return 4 * pairs * m.head_dim * m.q_heads


@dataclass
class Inputs:
    attn: PagedAttention
    plan: Any
    q: torch.Tensor
    kv: Any
    out: torch.Tensor
    sinks: torch.Tensor | None


def make_inputs(case: Case, page_size: int, dtype: torch.dtype, kv_lens=None, q_lens=None,
                device: str = "cuda", fp8: bool = False, table: Any = None,
                fused_merge: bool | None = None) -> Inputs:
    """fp8: an FP8 (e4m3) cache with a scale per KV head instead of one of `dtype`; table:
    an attention entry instead of the GPU's; fused_merge: decode pieces merged by the last
    one (no merge kernel) on every layer (True), never (False) or where the table says."""
    m = case.model
    kv_lens = list(kv_lens or case.kv_lens)
    q_lens = list(q_lens or case.q_lens)
    kv = make_paged_kv(kv_lens, m.kv_heads, m.head_dim, page_size, dtype, device, fp8=fp8,
                       per_head_scales=fp8)
    attn = PagedAttention(AttentionShape(m.q_heads, m.kv_heads, m.head_dim, page_size,
                                         kv_fp8=fp8), device, max_batch=max(len(kv_lens), 1),
                          table=table, fused_merge=fused_merge)
    if case.kind == "decode":
        plan = attn.plan_decode(kv_lens, kv.page_table)
    else:
        plan = attn.plan_prefill(q_lens, kv_lens, kv.page_table)
    q = torch.randn(sum(q_lens), m.q_heads, m.head_dim, device=device, dtype=dtype)
    sinks = torch.randn(m.q_heads, device=device) if m.sinks else None
    return Inputs(attn, plan, q, kv, torch.empty_like(q), sinks)


def ours(x: Inputs, sinks: bool = True, window_left: int | None = None
         ) -> Callable[[], Any]:
    s = x.sinks if sinks else None
    return lambda: x.attn.run(x.plan, x.q, x.kv.k_cache, x.kv.v_cache, out=x.out, sinks=s,
                              window_left=window_left, k_scale=x.kv.k_scale,
                              v_scale=x.kv.v_scale)


def check(case: Case, page_size: int, dtype: torch.dtype, fp8: bool = False,
          table: Any = None, fused_merge: bool | None = None) -> float:
    """Relative error against the reference on a cut-down copy of the case (at most two
    requests of at most 2048 cached tokens), fresh data."""
    m = case.model
    kv_lens = [min(n, 2048) for n in case.kv_lens[:2]]
    q_lens = [min(q, n) for q, n in zip(case.q_lens[:2], kv_lens, strict=True)]
    x = make_inputs(case, page_size, dtype, kv_lens, q_lens, fp8=fp8, table=table,
                    fused_merge=fused_merge)
    got = x.attn.run(x.plan, x.q, x.kv.k_cache, x.kv.v_cache, sinks=x.sinks,
                     window_left=m.window_left, k_scale=x.kv.k_scale, v_scale=x.kv.v_scale)
    indptr = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], dtype=torch.int32,
                          device=x.q.device)
    want, _ = reference_paged_attention(
        x.q, x.kv.k_cache, x.kv.v_cache, x.kv.page_table, indptr,
        torch.tensor(kv_lens, dtype=torch.int32, device=x.q.device),
        sm_scale=m.head_dim ** -0.5, window_left=m.window_left, sinks=x.sinks,
        k_scale=x.kv.k_scale, v_scale=x.kv.v_scale)
    return ((got.float() - want).norm() / want.norm()).item()


def _time(fn: Callable[[], Any], config: TimingConfig) -> float:
    return time_calls([fn], config).median_us


def run(cases: Sequence[Case], baselines: Sequence[str], copy_gbps: float | None,
        bf16_tflops: float | None, page_size: int = 64, dtype: torch.dtype = torch.bfloat16,
        config: TimingConfig | None = None, fp8_kv: bool = False,
        cuda_decode: bool = False, rows: list[dict[str, Any]] | None = None,
        fused_merge: bool = False, hopper_prefill: bool = False) -> list[dict[str, Any]]:
    """fp8_kv: decode rows also time our kernel on an FP8 cache (a scale per KV head) of
    the same shape: `fp8_us`, `fp8_speedup` (the bf16 time over it), `fp8_rel_err`.
    cuda_decode: decode rows also time the CUDA decode kernel (the table's rule with
    kernel "cuda"): `cuda_us`, `cuda_speedup` (the table's time over it), and with fp8_kv
    `fp8_cuda_us`, `fp8_cuda_speedup` (the bf16 table time over it); `cuda_rel_err`.
    fused_merge: decode rows also time the table's kernel with its pieces merged by the
    last one on every layer (no merge kernel): `fused_us`, `fused_speedup` (the table's
    time over it: about 1 where the row's `merge` already says fused), `fused_rel_err`.
    hopper_prefill: prefill rows also time the warp-specialized sm_90a kernel (the table's
    rule if it picks that kernel, else hopper_rule_for's): `hopper_us`, `hopper_tflops`,
    `hopper_speedup` (the table's time over it), `hopper_rel_err`, `hopper_rule`.
    rows: the list each finished case's row is appended to (returned), so a caller that
    stops the run midway (bench.cut) still holds the finished ones."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    baselines = base.installed(baselines)
    itemsize = torch.empty((), dtype=dtype).element_size()
    l2 = l2_cache_bytes()
    rows = [] if rows is None else rows
    with Progress(len(cases), "bench attention") as progress:
        for case in cases:
            m = case.model
            progress.step(f"{case.kind} {m.name} {case.shape}")
            full_bytes = 2 * sum(case.kv_lens) * m.kv_heads * m.head_dim * itemsize
            row: dict[str, Any] = {"kind": case.kind, "model": m.name, "shape": case.shape,
                                   "q_heads": m.q_heads, "kv_heads": m.kv_heads,
                                   "head_dim": m.head_dim, "sinks": m.sinks,
                                   "window_left": m.window_left, "page_size": page_size,
                                   "dtype": str(dtype).removeprefix("torch.")}
            if full_bytes > MAX_KV_BYTES:
                row["note"] = f"skipped: {full_bytes / 2**30:.0f} GiB of KV exceeds the budget"
                rows.append(row)
                continue
            row["rel_err"] = check(case, page_size, dtype)
            x = make_inputs(case, page_size, dtype)
            us = _time(ours(x, window_left=m.window_left), config)
            row["us"] = us
            row.update(clock_state())  # the clock it ran at (runs differ; was it the GPU?)
            if case.kind == "decode":
                nbytes = kv_bytes(case, itemsize)
                row["bytes"] = nbytes
                row["tbps"] = nbytes / us / 1e6
                row["pct_ceiling"] = 100 * row["tbps"] * 1e3 / copy_gbps if copy_gbps else None
                row["splits"] = x.plan.splits
                if x.plan.splits > 1:  # how the table's choice merges the pieces
                    fused = x.attn.fuses_merge(m.window_left, x.plan.launch.block_n)
                    row["merge"] = "fused" if fused else "kernel"
                row["l2"] = "warm" if 4 * nbytes <= l2 else "cold"
            else:
                row["flops"] = flops(case)
                row["tflops"] = row["flops"] / us / 1e6
                row["pct_ceiling"] = 100 * row["tflops"] / bf16_tflops if bf16_tflops else None
            if m.sinks:
                plain = _time(ours(x, sinks=False, window_left=m.window_left), config)
                row["no_sink_us"] = plain
                row["feature_cost_pct"] = 100 * (us / plain - 1)
            if m.window_left is not None and case.kind == "decode":
                short = min(case.kv_lens[0], m.window_left + 1)
                y = make_inputs(case, page_size, dtype, kv_lens=[short] * len(case.kv_lens))
                full = _time(ours(y), config)
                row["window_equiv_full_us"] = full
                row["window_cost_pct"] = 100 * (us / full - 1)
                del y
            if "flashinfer" in baselines:
                base.time_flashinfer(row, case, x, config)
            del x
            if fp8_kv and case.kind == "decode":
                _time_variant(row, "fp8", case, page_size, dtype, us, config, fp8=True)
            if fused_merge and case.kind == "decode":
                _time_variant(row, "fused", case, page_size, dtype, us, config,
                              fused_merge=True)
            if cuda_decode and case.kind == "decode":
                _time_cuda_decode(row, case, page_size, dtype, us, fp8_kv, config)
            if hopper_prefill and case.kind == "prefill":
                _time_hopper_prefill(row, case, page_size, dtype, us, config)
            base.time_baselines(row, case, baselines, dtype, config)
            rows.append(row)
            torch.cuda.empty_cache()
    return rows


def checked_time(case: Case, page_size: int, dtype: torch.dtype, config: TimingConfig,
                 **variant: Any) -> tuple[float, float]:
    """(relative error, median us) of our kernel on the case with make_inputs' `variant`
    options (table=, fp8=, ...), checked against the reference before it is timed."""
    err = check(case, page_size, dtype, **variant)
    x = make_inputs(case, page_size, dtype, **variant)
    return err, _time(ours(x, window_left=case.model.window_left), config)


def _time_variant(row: dict[str, Any], key: str, case: Case, page_size: int,
                  dtype: torch.dtype, us: float, config: TimingConfig, **variant: Any
                  ) -> None:
    """Our kernel on the case with make_inputs' `variant` options, checked first: the
    row's `<key>_rel_err`, `<key>_us` and `<key>_speedup` (`us`, the plain call's time,
    over it)."""
    row[f"{key}_rel_err"], row[f"{key}_us"] = checked_time(case, page_size, dtype, config,
                                                           **variant)
    row[f"{key}_speedup"] = us / row[f"{key}_us"]


def prebuilds(cases: Sequence[Case], baselines: Sequence[str], page_size: int,
              dtype: torch.dtype = torch.bfloat16, fp8_kv: bool = False,
              fused_merge: bool = False) -> list[tuple[str, list[Build]]]:
    """What `--build-only` builds, per (kind, model) of the run: our kernel on the cut-down
    inputs `check` uses (and the FP8 cache with fp8_kv, the merge in the last piece with
    fused_merge), and FlashInfer's plan for the same
    case (its module depends on kind, head_dim, dtype, sinks, window and the GQA group, not
    on lengths)."""
    groups = []
    for case in {(c.kind, c.model.name): c for c in cases}.values():
        builds: list[Build] = [("ours", lambda c=case: check(c, page_size, dtype))]
        if fp8_kv and case.kind == "decode":
            builds.append(("ours fp8", lambda c=case: check(c, page_size, dtype, fp8=True)))
        if fused_merge and case.kind == "decode":
            builds.append(("ours fused", lambda c=case: check(c, page_size, dtype,
                                                               fused_merge=True)))
        if "flashinfer" in baselines:
            builds.append(("flashinfer",
                           lambda c=case: _plan_flashinfer(c, page_size, dtype)))
        groups.append((f"{case.kind} {case.model.name}", builds))
    return groups


def _plan_flashinfer(case: Case, page_size: int, dtype: torch.dtype) -> None:
    kv_lens = [min(n, 256) for n in case.kv_lens[:2]]
    q_lens = [min(q, n) for q, n in zip(case.q_lens[:2], kv_lens, strict=True)]
    base.plan_flashinfer(case, make_inputs(case, page_size, dtype, kv_lens, q_lens),
                         q_lens, kv_lens)


def _time_cuda_decode(row: dict[str, Any], case: Case, page_size: int, dtype: torch.dtype,
                      us: float, fp8_kv: bool, config: TimingConfig) -> None:
    """The CUDA decode kernel on this decode case (and its FP8 cache), checked first."""
    from dataclasses import replace

    from ...ops.attention.dispatch import attention_table

    table = attention_table()
    for fp8, key in ((False, "cuda"), (True, "fp8_cuda")) if fp8_kv else ((False, "cuda"),):
        rule = table.decode_rule(case.model.head_dim, fp8, len(case.kv_lens))
        cuda = replace(rule, kernel="cuda", kv_heads_per_program=1, max_batch=None,
                       num_warps=rule.num_warps if rule.num_warps in (4, 8) else 4,
                       num_stages=min(max(rule.num_stages, 2), 4))
        trial = replace(table, decode_rules=(replace(cuda, max_head_dim=None),),
                        fp8_decode_rules=())
        _time_variant(row, key, case, page_size, dtype, us, config, fp8=fp8, table=trial)
    # one error for both caches, the larger
    row["cuda_rel_err"] = max(row["cuda_rel_err"], row.pop("fp8_cuda_rel_err", 0.0))


def _time_hopper_prefill(row: dict[str, Any], case: Case, page_size: int,
                         dtype: torch.dtype, us: float, config: TimingConfig) -> None:
    """The sm_90a prefill kernel on this prefill case, checked first."""
    from dataclasses import replace

    from ...ops.attention.dispatch import attention_table, hopper_rule_for

    table = attention_table()
    rule = table.prefill_rule(case.model.head_dim)
    if rule.kernel != "hopper":
        rule = hopper_rule_for(case.model.head_dim)
    # the table's portable rule after it: a 192-row rule's fallback must be a rule of its own
    trial = replace(table, prefill_rules=(
        replace(rule, max_head_dim=case.model.head_dim),
        replace(table.portable_prefill_rule(case.model.head_dim), max_head_dim=None)))
    _time_variant(row, "hopper", case, page_size, dtype, us, config, table=trial)
    row["hopper_tflops"] = row["flops"] / row["hopper_us"] / 1e6
    row["hopper_rule"] = [rule.block_m, rule.block_n, rule.num_stages]


# ---- the command: `fuseinfer bench attention` and `fuseinfer tune attention` ------------
KINDS = ("decode", "prefill")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help="keep only these models (default: Llama-3-8B Qwen3-0.6B "
                        "GPT-OSS GPT-OSS-win128)")
    parser.add_argument("--batches", nargs="+", type=int, help="decode batch sizes "
                        "(default: 1 8 64 256)")
    parser.add_argument("--lengths", nargs="+", type=int, help="decode KV lengths "
                        "(default: 1024 4096 16384 65536; batch 1 x 8192 and 50 x 300 are "
                        "always added)")
    parser.add_argument("--prefill", nargs="+", metavar="NAME",
                        help="prefill shapes (default: 1x4k 4x2k 1x16k 'extend 2k on 4k')")
    parser.add_argument("--page-size", type=int, default=64,
                        help="tokens per KV page (default 64; 1 and 16 exercise the per-row "
                        "gather path)")
    parser.add_argument("--fp8-kv", action="store_true",
                        help="decode rows also time an FP8 (e4m3) cache of the same shape, "
                        "a scale per KV head: 'fp8 us' and 'x fp8' (the bf16 time over it)")
    parser.add_argument("--cuda-decode", action="store_true",
                        help="decode rows also time the CUDA decode kernel: 'cuda us', "
                        "'x cuda' (the table's time over it) and, with --fp8-kv, 'fp8 cuda "
                        "us', 'x fp8 cuda' (the bf16 time over it)")
    parser.add_argument("--fused-merge", action="store_true",
                        help="decode rows also time the table's kernel with the split "
                        "pieces merged by the last one, no merge kernel: 'fused us', 'x "
                        "fused' (the table's time over it; the 'merge' column says how the "
                        "table merges)")
    parser.add_argument("--hopper-prefill", action="store_true",
                        help="prefill rows also time the warp-specialized sm_90a kernel "
                        "(the table's rule if it picks it, else block_n 128 with the most "
                        "tiles in flight that fit): 'hopper us', 'hopper TFLOP/s', 'x "
                        "hopper' (the table's time over it)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES),
                        help="baselines timed in the same run: sdpa and flex on contiguous "
                        "KV, flashinfer (skipped if absent) on the same paged KV")
    parser.add_argument("--build-only", action="store_true",
                        help="build every JIT module the run would use (our kernels, the "
                        "FlashInfer baseline's) and time nothing: run it beside another "
                        "step so the builds are off the bench's clock")
    add_output_options(parser, "attention", continue_run=True)
    parser.set_defaults(pdl="auto", cold=False)  # recorded with the run, as the others'


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps, load_ceilings

    names = args.models or list(MODELS)
    prefill = args.prefill or list(PREFILL)
    check_known("model", names, MODELS)
    check_known("prefill shape", prefill, PREFILL)
    check_known("baseline", args.baselines, BASELINES)
    if args.page_size < 1:
        raise SystemExit("--page-size must be >= 1")
    models = [MODELS[n] for n in names]
    cases = []
    if "decode" in args.kinds:
        cases += decode_cases(models, args.batches or DECODE_BATCHES,
                              args.lengths or DECODE_LENGTHS)
    if "prefill" in args.kinds:
        cases += prefill_cases([m for m in models if m.name in PREFILL_MODELS], prefill)
    if args.build_only:
        return 1 if run_builds(prebuilds(cases, base.installed(args.baselines),
                                         args.page_size, fp8_kv=args.fp8_kv,
                                         fused_merge=args.fused_merge)) else 0
    copy_gbps = copy_bandwidth_gbps()
    ceilings = load_ceilings()
    bf16 = ceilings.bf16_tflops if ceilings else None
    rows: list[dict[str, Any]] = []
    cut = None
    try:
        with cut_by_sigterm():
            run(cases, args.baselines, copy_gbps, bf16, page_size=args.page_size,
                fp8_kv=args.fp8_kv, cuda_decode=args.cuda_decode, rows=rows,
                fused_merge=args.fused_merge, hopper_prefill=args.hopper_prefill)
    except RunCut as err:
        cut = cut_note(len(rows), len(cases), err)
    return report_run("attention", COLUMNS, rows, copy_gbps, args, cut_short=cut)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kinds", nargs="+",
                        choices=["prefill", "decode", "decode-fp8", "splits", "merge"],
                        help="tune these parts (the prefill blocks, the decode blocks, the "
                        "decode blocks for FP8 caches, the decode split policy, where "
                        "decode's last piece merges the pieces), keeping the table's "
                        "current rules for the others (default: prefill, decode, splits "
                        "and merge)")
    parser.add_argument("--head-dims", nargs="+", type=int, choices=[64, 128],
                        help="tune the prefill / decode blocks of these head dims only "
                        "(default: 64 and 128)")
    parser.add_argument("--resume", type=Path, metavar="LOG",
                        help="an earlier run's --log (one cut short, say): its timings are "
                        "taken back instead of timing those candidates again")


register_suite(Suite(
    name="attention", help="paged decode and prefill/extend attention on model shapes "
    "against SDPA and flex_attention (bf16)", run=run_command, add_arguments=add_arguments,
    records="attention",
    # decode 64x4096 and the always-added 1x8192 (split-KV), prefill 1x4k
    quick_args=("--models", "Llama-3-8B", "--batches", "64", "--lengths", "4096",
                "--prefill", "1x4k"),
    tune=tuner_in("attention_tune", help="paged prefill and decode block sizes",
                  add_arguments=add_tune_arguments)))
