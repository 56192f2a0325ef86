"""`fuseinfer bench rope`: RoPE fused with the KV-cache write (rope_with_cos_sin_cache), and
the cache write alone (store_kv_cache, see kvcache.py), on real model shapes against our
two-launch path, torch and flashinfer (`fuseinfer tune rope`: both ops' launch shapes, in
rope_tune.py).

Query, key and value are column slices of one fused qkv buffer [tokens, (Hq + 2 Hk) D], as
models call the op, so their rows are strided; positions are random int64 in
[0, MAX_POSITION); the caches are bf16 [2 * tokens, Hk, D] written at distinct random
slots. The cos/sin cache uses the textbook frequencies with the model's theta (no
YaRN/llama3 rescaling: that changes the table's values, not the work).

Bytes counted per call (the fewest any kernel must move), D = head_size, T = tokens:
rope+kv (fused, separate and the baselines alike) reads and writes q and k, reads v and
writes k and v to the cache: (2 Hq + 2 Hk + Hk + 2 Hk) * D * T * itemsize, plus
T * (8 + rotary_dim * 4) for the int64 positions and float32 cos/sin rows; rope (no cache
write) drops the 3 Hk terms; store_kv: kvcache.store_bytes.

FlashInfer (when installed) rotates in place on the same buffer sets (its cos/sin cache
layout is ours, no conversion), then the plain cache write; it is timed only after its q, k
and cache rows agree with ours on fresh data. It has no store_kv: '-' on those rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import flashinfer_baselines, rope_baselines  # noqa: I001
from ..kernel_suite import PDL, add_run_options, check_known, report_run
from ..progress import Progress
from ..registry import Suite, no_arguments, register_suite, tuner_in
from ..report import Column
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from . import kvcache


@dataclass(frozen=True)
class Model:
    name: str
    q_heads: int
    kv_heads: int
    head_size: int
    rotary_dim: int
    is_neox: bool
    theta: float
    kv_cache: bool = True  # False: time the rotation only (see DeepSeek-V3)
    note: str = ""


_DEEPSEEK_NOTE = ("rope only: MLA caches the compressed latent, not per-head k/v, so no "
                  "cache write is timed")
MODELS = {m.name: m for m in (
    Model("Llama-3-8B", 32, 8, 128, 128, True, 500_000.0),
    Model("Qwen3-0.6B", 16, 8, 128, 128, True, 1_000_000.0),
    Model("GPT-OSS-120B", 64, 8, 64, 64, True, 150_000.0),
    # DeepSeek-V3 rotates the 64-dim rope part of its 128 query heads and one shared 64-dim
    # key, interleaved (GPT-J style). Its cache is latent (MLA), not per-head k/v: rope only.
    Model("DeepSeek-V3", 128, 1, 64, 64, False, 10_000.0, kv_cache=False, note=_DEEPSEEK_NOTE),
)}
TOKENS = (1, 8, 32, 128, 512, 4096, 16384)
BASELINES = ("eager", "compile", "flashinfer")
MAX_POSITION = 32768

COLUMNS = [
    Column("op", "op", align="<"),
    Column("model", "model", align="<"),
    Column("tokens", "tokens"),
    Column("us", "us", "{:.2f}"),
    Column("gbps", "GB/s", "{:.0f}"),
    Column("pct_copy", "% copy", "{:.1f}"),
    Column("vs_separate", "x separate", "{:.2f}"),
    Column("vs_eager", "x eager", "{:.2f}"),
    Column("vs_compile", "x compile", "{:.2f}"),
    Column("vs_flashinfer", "x flashinfer", "{:.2f}"),
    Column("l2", "L2", align="<"),
    Column("rel_err", "rel err", "{:.1e}"),
]


@dataclass(frozen=True)
class Case:
    op: str  # "rope+kv", "rope" (models without a per-head cache) or "store_kv"
    model: Model
    tokens: int


def cases(models: Sequence[Model], tokens: Sequence[int]) -> list[Case]:
    """Every rope row first (rope+kv, or rope alone where the model has no k/v cache), then
    the store_kv rows of the models that have one."""
    rows = [Case("rope+kv" if m.kv_cache else "rope", m, t) for m in models for t in tokens]
    return rows + [Case("store_kv", m, t) for m in models if m.kv_cache for t in tokens]


def bytes_moved(case: Case, itemsize: int) -> int:
    m, t = case.model, case.tokens
    if case.op == kvcache.OP:
        return kvcache.store_bytes(m.kv_heads, m.head_size, t, itemsize)
    heads = 2 * m.q_heads + 2 * m.kv_heads  # q and k, read and written
    if case.op == "rope+kv":
        heads += m.kv_heads + 2 * m.kv_heads  # v read; k and v written to the cache
    return heads * m.head_size * t * itemsize + t * (8 + m.rotary_dim * 4)


def cos_sin_cache(max_position: int, rotary_dim: int, theta: float,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """float32 [max_position, rotary_dim]: row p = cat(cos(p * inv_freq), sin(p * inv_freq)),
    inv_freq[i] = theta ** (-2i / rotary_dim), computed in float64."""
    exponent = torch.arange(0, rotary_dim, 2, dtype=torch.float64, device=device) / rotary_dim
    angles = torch.outer(torch.arange(max_position, dtype=torch.float64, device=device),
                         theta ** -exponent)
    return torch.cat((angles.cos(), angles.sin()), dim=-1).float()


def make_sets(model: Model, tokens: int, dtype: torch.dtype, count: int,
              device: torch.device | str = "cuda") -> list[dict[str, torch.Tensor]]:
    m = model
    cos_sin = cos_sin_cache(MAX_POSITION, m.rotary_dim, m.theta, device)
    widths = [m.q_heads * m.head_size, m.kv_heads * m.head_size, m.kv_heads * m.head_size]
    slots = 2 * tokens
    sets = []
    for _ in range(count):
        qkv = torch.randn(tokens, sum(widths), device=device, dtype=dtype)
        q, k, v = qkv.split(widths, dim=1)
        s = {"qkv": qkv, "q": q, "k": k, "cos_sin": cos_sin,
             "positions": torch.randint(0, MAX_POSITION, (tokens,), device=device)}
        if m.kv_cache:
            s["v"] = v
            s["k_cache"] = torch.empty(slots, m.kv_heads, m.head_size, device=device,
                                       dtype=dtype)
            s["v_cache"] = torch.empty_like(s["k_cache"])
            s["loc"] = torch.randperm(slots, device=device)[:tokens]
        sets.append(s)
    return sets


def _rope_args(s: dict[str, torch.Tensor], m: Model) -> tuple[Any, ...]:
    """Our rope's arguments up to cache_loc; the cache ones are None without a cache."""
    return (s["positions"], s["q"], s["k"], m.head_size, s["cos_sin"], m.is_neox,
            s.get("v"), s.get("k_cache"), s.get("v_cache"), s.get("loc"))


def _fused(s: dict[str, torch.Tensor], m: Model, pdl: bool | None) -> None:
    torch.ops.fuseinfer.rope_with_cos_sin_cache(*_rope_args(s, m), None, None, pdl)


def _store(s: dict[str, torch.Tensor], m: Model, pdl: bool | None) -> None:
    kvcache.store(s, pdl)


def _separate(s: dict[str, torch.Tensor], m: Model, pdl: bool | None) -> None:
    torch.ops.fuseinfer.rope_with_cos_sin_cache(*_rope_args(s, m)[:6], None, None, None,
                                                None, None, None, pdl)
    _store(s, m, pdl)


OURS: dict[str, Callable[[dict[str, torch.Tensor], Model, bool | None], None]] = {
    "fused": _fused, "separate": _separate, "store": _store}


def ours(provider: str, m: Model, sets: list[dict[str, torch.Tensor]],
         enable_pdl: bool | None) -> list[Callable[[], Any]]:
    fn = OURS[provider]
    return [lambda s=s: fn(s, m, enable_pdl) for s in sets]


def baseline(name: str, op: str, m: Model, sets: list[dict[str, torch.Tensor]]
             ) -> list[Callable[[], Any]] | None:
    fn = rope_baselines.baseline_fn(name, op)
    if fn is None:
        return None
    if op == "store_kv":
        return [lambda s=s: fn(*kvcache.store_args(s)) for s in sets]
    # The rotated q and k stay referenced by their set until its next call, so the
    # allocator hands out as many output buffers as there are input sets.
    return [lambda s=s: s.__setitem__("out", fn(*_rope_args(s, m))) for s in sets]


def _rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    return ((got.float() - ref.float()).norm() / ref.float().norm()).item()


def _clone_set(s: dict[str, torch.Tensor], m: Model) -> dict[str, torch.Tensor]:
    """A copy of a buffer set with q, k and v again column slices of one qkv copy, the
    layout the timed calls see."""
    copy = {name: t.clone() for name, t in s.items()}
    widths = [m.q_heads * m.head_size, m.kv_heads * m.head_size, m.kv_heads * m.head_size]
    copy["q"], copy["k"], v = copy["qkv"].split(widths, dim=1)
    if "v" in copy:
        copy["v"] = v
    return copy


def check(case: Case, dtype: torch.dtype, enable_pdl: bool | None,
          device: torch.device | str = "cuda",
          reference: Callable[..., tuple[torch.Tensor, torch.Tensor]] = rope_baselines.torch_rope
          ) -> float:
    """Relative error of our op (fused, or store for store_kv) against `reference` (the
    eager baseline; FlashInfer's before it is timed) on fresh data: the largest over q, k
    and the cache rows written. Caches start as NaN; a row written outside cache_loc (or a
    NaN anywhere) gives inf or NaN."""
    m = case.model
    s = make_sets(m, case.tokens, dtype, 1, device)[0]
    for name in ("k_cache", "v_cache"):
        if name in s:
            s[name].fill_(float("nan"))
    ref = _clone_set(s, m)
    if case.op == "store_kv":
        rope_baselines.torch_store_kv(*kvcache.store_args(ref))
        _store(s, m, enable_pdl)
        pairs = []
    else:
        ref["q"], ref["k"] = reference(*_rope_args(ref, m))
        _fused(s, m, enable_pdl)
        pairs = [(s["q"], ref["q"]), (s["k"], ref["k"])]
    if "k_cache" in s:
        loc = s["loc"]
        others = torch.ones(s["k_cache"].size(0), dtype=torch.bool, device=loc.device)
        others[loc] = False
        for name in ("k_cache", "v_cache"):
            if not s[name][others].isnan().all():
                return float("inf")
            pairs.append((s[name][loc], ref[name][loc]))
    # torch's max, unlike Python's, keeps a NaN.
    return torch.tensor([_rel(got, want) for got, want in pairs]).max().item()


def _time_flashinfer(row: dict[str, Any], case: Case, calls: list[Callable[[], Any]],
                     dtype: torch.dtype, enable_pdl: bool | None, config: TimingConfig,
                     ours_us: float) -> None:
    """FlashInfer's calls on the timed sets, once its q, k and cache rows agree with ours on
    fresh data (flashinfer_* keys of row)."""
    flashinfer_baselines.check_then_time(
        row, lambda: check(case, dtype, enable_pdl, reference=rope_baselines.flashinfer_rope),
        lambda: time_calls(calls, config), ours_us)


def run(models: Sequence[Model], tokens: Sequence[int], baselines: Sequence[str],
        copy_gbps: float | None, dtype: torch.dtype = torch.bfloat16,
        enable_pdl: bool | None = None, config: TimingConfig | None = None,
        cold: bool = False) -> list[dict[str, Any]]:
    """Time every case; one row each with our time and the other providers' ratios.

    Every provider runs on the same buffer sets: one set, warm in L2, when a call's data
    fits in a quarter of L2 (decode-sized), else enough rotated sets to defeat L2; `cold`
    rotates for every shape. Our op runs once on fresh data first and is checked against
    the eager baseline."""
    config = config or TimingConfig(repeats=15, target_graph_ms=2.0)
    if "flashinfer" in baselines and not rope_baselines.flashinfer_available():
        baselines = [b for b in baselines if b != "flashinfer"]
    l2 = l2_cache_bytes()
    itemsize = torch.empty((), dtype=dtype).element_size()
    todo = cases(models, tokens)
    rows = []
    with Progress(len(todo), "bench rope") as progress:
        for case in todo:
            m, op = case.model, case.op
            progress.step(f"{op} {m.name} tokens={case.tokens}")
            rel_err = check(case, dtype, enable_pdl)
            nbytes = bytes_moved(case, itemsize)
            sets = make_sets(m, case.tokens, dtype, buffer_sets(nbytes, l2, cold))
            timed = time_calls(ours("store" if op == "store_kv" else "fused", m, sets,
                                    enable_pdl), config)
            row: dict[str, Any] = {
                "op": op, "model": m.name, "tokens": case.tokens, "q_heads": m.q_heads,
                "kv_heads": m.kv_heads, "head_size": m.head_size,
                "rotary_dim": m.rotary_dim, "is_neox": m.is_neox,
                "dtype": str(dtype).removeprefix("torch."), "bytes": nbytes,
                "us": timed.median_us, "us_p20": timed.p20_us, "us_p80": timed.p80_us,
                "timing": timed.method, "calls_per_replay": timed.calls_per_replay,
                "rotated_sets": len(sets),
                "l2": "cold" if cold or 4 * nbytes > l2 else "warm",
                "gbps": nbytes / timed.median_us / 1e3,
            }
            row["pct_copy"] = 100 * row["gbps"] / copy_gbps if copy_gbps else None
            if op == "rope+kv":
                other = time_calls(ours("separate", m, sets, enable_pdl), config)
                row["separate_us"] = other.median_us
                row["vs_separate"] = other.median_us / timed.median_us
            for name in baselines:
                calls = baseline(name, op, m, sets)
                if calls is None:
                    continue  # flashinfer has no write into this cache layout
                if name == "flashinfer":
                    _time_flashinfer(row, case, calls, dtype, enable_pdl, config,
                                     timed.median_us)
                    continue
                other = time_calls(calls, config)
                row[f"{name}_us"] = other.median_us
                row[f"vs_{name}"] = other.median_us / timed.median_us
            row["rel_err"] = rel_err
            if m.note:
                row["note"] = m.note
            rows.append(row)
            del sets
    return rows


# ---- the command: `fuseinfer bench rope` and `fuseinfer tune rope` ----------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help="keep only these models (default: Llama-3-8B Qwen3-0.6B "
                        "GPT-OSS-120B DeepSeek-V3)")
    parser.add_argument("--tokens", nargs="+", type=int,
                        help="token counts (default: 1 8 32 128 512 4096 16384)")
    parser.add_argument("--baselines", nargs="*", default=list(BASELINES),
                        help="baselines timed in the same run (flashinfer skipped if "
                        "absent); our unfused rope + store_kv is always timed")
    add_run_options(parser, "rope")


def run_command(args: argparse.Namespace) -> int:
    from ..ceilings import copy_bandwidth_gbps

    names = args.models or list(MODELS)
    check_known("model", names, MODELS)
    check_known("baseline", args.baselines, BASELINES)
    tokens = args.tokens or list(TOKENS)
    if min(tokens) < 1:
        raise SystemExit("--tokens: token counts must be positive")
    copy_gbps = copy_bandwidth_gbps()
    rows = run([MODELS[n] for n in names], tokens, args.baselines, copy_gbps,
               enable_pdl=PDL[args.pdl], cold=args.cold)
    return report_run("rope", COLUMNS, rows, copy_gbps, args)


register_suite(Suite(
    name="rope", help="RoPE fused with the KV-cache write, and the cache write alone "
    "(store_kv_cache), on real model shapes (bf16)", run=run_command,
    add_arguments=add_arguments, records="rope",
    quick_args=("--models", "Llama-3-8B", "--tokens", "1", "128", "4096"),
    tune=tuner_in("rope_tune", help="RoPE (+ KV write) and store_kv_cache launch shapes "
                  "(the rope and kvcache table entries)", add_arguments=no_arguments)))
