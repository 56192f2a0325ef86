"""`fuseinfer tune moe`: the `moe` entry for the present GPU, timed on the fused MoE layer
of the models `fuseinfer bench moe` knows (graph replay, routed sets rotated past L2, as the
bench times them, with fewer repeats).

1. Per token bucket, fused_moe's Triton block sizes from a small candidate menu: `rules`
   on bf16 weights, `fp8_rules` on fp8_block weights (models whose H and I are multiples of
   128). The winner of a bucket has the lowest geometric-mean time over its token counts
   and the models; a candidate whose output misses the float32 reference (the bench's
   tolerance) or fails is skipped.
2. The fp8 path per bucket: the tuned Triton rule against each CUTLASS grouped
   configuration this build holds (sm_90a); a bucket goes to the faster. Token buckets
   become routed-rows buckets through the models' top-k (the largest).
3. `mxfp4_rules` on random MXFP4 experts of the models whose checkpoints ship them
   (GPT-OSS-20B and -120B: clamped SwiGLU, biases), from MXFP4_CANDIDATES (block_k up
   to 256); `mxfp4_source` records it.

--quant picks the parts (default all); the parts not tuned keep the GPU's present entry.
Adjacent buckets with the same winner merge. PDL as the table's default (on).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from .. import moe_baselines as mb
from ..flashinfer_baselines import describe
from ..progress import Progress
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from ..tuning import tune_target, write_tune_log

# (largest T the bucket covers, the token counts timed for it); the last is unbounded.
# T = 1 (batch-1 decode: k experts of one row) has its own bucket: with few weight tiles in
# flight its best tile is narrower than at 8 (measured on the H200's mxfp4 GEMMs).
BUCKETS: tuple[tuple[int | None, tuple[int, ...]], ...] = (
    (1, (1,)), (8, (8,)), (32, (32,)), (256, (128, 256)), (1024, (1024,)), (None, (4096,)))
# (block_m, block_n, block_k, group_m, num_warps, num_stages); fp8 ones keep block_k | 128
BF16_CANDIDATES = ((16, 64, 64, 1, 4, 3), (16, 128, 64, 1, 4, 3), (32, 64, 64, 4, 4, 3),
                   (32, 128, 64, 4, 4, 4), (64, 128, 64, 8, 4, 3), (64, 128, 64, 8, 8, 4),
                   (128, 128, 64, 8, 8, 3))
FP8_CANDIDATES = ((16, 128, 128, 1, 4, 3), (16, 64, 128, 1, 4, 4), (32, 128, 128, 4, 4, 3),
                  (64, 128, 128, 8, 4, 3), (64, 128, 128, 8, 8, 4), (128, 128, 128, 8, 8, 3))
# mxfp4: block_k a multiple of 32 up to 256 (a longer k step amortizes the in-kernel decode)
MXFP4_CANDIDATES = ((16, 32, 256, 1, 4, 4), (16, 64, 128, 1, 4, 4), (16, 64, 256, 1, 4, 4),
                    (16, 128, 128, 1, 4, 3), (16, 128, 256, 1, 8, 3), (32, 64, 128, 4, 4, 4),
                    (32, 128, 128, 4, 4, 3), (64, 128, 64, 8, 4, 3), (64, 128, 128, 8, 4, 3),
                    (64, 128, 128, 8, 8, 3), (128, 128, 64, 8, 8, 3), (128, 128, 128, 8, 8, 3))
# the same tiles with split_dot (two dots over A's even / odd columns, no B interleave):
# the small-M ones, where the decode's shuffles weigh most, and two prefill ones
MXFP4_SPLIT_CANDIDATES = ((16, 64, 128, 1, 4, 4, True), (16, 64, 256, 1, 4, 4, True),
                          (16, 128, 128, 1, 4, 3, True), (32, 128, 128, 4, 4, 3, True),
                          (64, 128, 64, 8, 4, 3, True), (128, 128, 64, 8, 8, 3, True))
TUNE_QUANTS = ("bf16", "fp8_block", "mxfp4")
Key = tuple[str, int]  # (model, tokens)
Times = dict[str, dict[Key, float]]  # candidate name -> µs per key


def _name(c: tuple[int | bool, ...]) -> str:
    split = "_split" if len(c) > 6 and c[6] else ""
    return "triton_{}x{}x{}_g{}_w{}_s{}".format(*c[:6]) + split


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def best(times: Times, keys: Sequence[Key]) -> str | None:
    """The candidate with the lowest geomean over `keys`, among those that ran all."""
    full = [(_geomean([t[k] for k in keys]), name) for name, t in times.items()
            if all(k in t for k in keys)]
    return min(full)[1] if full else None


def _entry(rule_params: tuple[int, ...] | None, fp8_params: tuple[int, ...] | None,
           grouped: str | None, mxfp4_params: tuple[int, ...] | None = None) -> Any:
    """A one-rule `moe` entry for timing one candidate (grouped: a CUTLASS configuration
    for every fp8 bucket, else Triton)."""
    from ...ops.moe.moe_dispatch import MOE_BUILTIN, GroupedRule, MoeLaunchRule, Mxfp4LaunchRule

    def rule(params: tuple[int, ...] | None, default: tuple[MoeLaunchRule, ...],
             cls: type = MoeLaunchRule) -> tuple[MoeLaunchRule, ...]:
        return default if params is None else (cls(None, *params),)

    return replace(MOE_BUILTIN, source="tuning candidate",
                   rules=rule(rule_params, MOE_BUILTIN.rules),
                   fp8_rules=rule(fp8_params, MOE_BUILTIN.fp8_rules),
                   fp8_backend="cutlass" if grouped else "triton",
                   fp8_grouped=(GroupedRule(None, grouped or "triton"),),
                   mxfp4_rules=rule(mxfp4_params, MOE_BUILTIN.mxfp4_rules, Mxfp4LaunchRule))


def measure(models: Sequence[mb.MoeModel], quant: str | None,
            candidates: dict[str, Any], timing: TimingConfig, log: list[dict[str, Any]],
            device: str = "cuda") -> Times:
    """µs of every candidate entry on every (model, T) of the buckets: checked against the
    reference on the first set, then timed; failures and mismatches logged, skipped."""
    from ...ops.moe.fused_moe import fused_moe
    from ...ops.moe.moe_dispatch import forced_entry
    from ..moe_inputs import make_inputs

    times: Times = {name: {} for name in candidates}
    tokens = [t for _, bucket in BUCKETS for t in bucket]
    tol = mb.LAYER_REL_ERR[quant]
    with Progress(len(models) * len(tokens), f"tune moe ({quant or 'bf16'})") as progress:
        for model in models:
            weights = mb.make_weights(model, quant, device)
            per_expert = mb.expert_bytes(model, quant)
            for t in tokens:
                progress.step(f"{model.name} tokens={t}: {len(candidates)} candidates")
                guess = per_expert * min(model.experts, t * model.topk)
                sets = make_inputs(model, t, buffer_sets(guess, l2_cache_bytes(), cold=True),
                                   True, device)
                calls = [lambda s=s, w=weights: fused_moe(
                    s.hidden, w.w13, w.w2, s.weights, s.ids, out=s.out, **w.op_kwargs())
                    for s in sets]
                for name, entry in candidates.items():
                    row: dict[str, Any] = {"model": model.name, "tokens": t,
                                           "quant": quant or "bf16", "candidate": name}
                    try:
                        with forced_entry(entry):
                            s0 = sets[0]
                            s0.out.fill_(float("nan"))
                            calls[0]()
                            err = mb.layer_rel_err(s0.out, s0.hidden, weights,
                                                   (s0.weights, s0.ids))
                            row["rel_err"] = err
                            if not err <= tol:
                                row["error"] = f"rel err {err:.1e} > {tol:.0e}"
                            else:
                                row["us"] = time_calls(calls, timing).median_us
                                times[name][(model.name, t)] = row["us"]
                    except Exception as error:  # this candidate cannot run this case
                        row["error"] = describe(error)
                    log.append(row)
                del sets, calls
            del weights
            if device == "cuda":
                torch.cuda.empty_cache()
    return times


def choose(times: Times, models: Sequence[mb.MoeModel]) -> list[tuple[int | None, str]]:
    """Per bucket (max_tokens, winner), adjacent equal winners merged; the last unbounded."""
    out: list[tuple[int | None, str]] = []
    for max_tokens, tokens in BUCKETS:
        keys = [(m.name, t) for m in models for t in tokens]
        winner = best(times, keys)
        if winner is None:
            raise RuntimeError(f"no candidate ran every model at tokens {tokens}")
        if out and out[-1][1] == winner:
            out[-1] = (max_tokens, winner)
        else:
            out.append((max_tokens, winner))
    out[-1] = (None, out[-1][1])
    return out


def _rules(choices: Sequence[tuple[int | None, str]], params: dict[str, tuple[int, ...]],
           cls: type | None = None) -> tuple[Any, ...]:
    from ...ops.moe.moe_dispatch import MoeLaunchRule

    make = cls or MoeLaunchRule
    return tuple(make(max_tokens, *params[name]) for max_tokens, name in choices)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"tune on these models' shapes (default: {' '.join(mb.MODELS)}; "
                        "mxfp4 on those that ship MXFP4 experts: GPT-OSS-20B, GPT-OSS-120B)")
    parser.add_argument("--quant", nargs="+", choices=TUNE_QUANTS, default=list(TUNE_QUANTS),
                        help="the parts of the entry to tune (default: all); the others keep "
                        "this GPU's present entry")


def tune_command(args: argparse.Namespace) -> int:
    from ...ops.moe.fp8_blockwise_grouped_mm import built_grouped_configs, cutlass_grouped_runs
    from ...ops.moe.moe_dispatch import OP_FAMILY, GroupedRule, Mxfp4LaunchRule, effective
    from ..kernel_suite import check_known

    names = args.models or list(mb.MODELS)
    check_known("model", names, mb.MODELS)
    quants = getattr(args, "quant", None) or list(TUNE_QUANTS)
    models = [mb.MODELS[n] for n in names]
    fp8_models = [m for m in models if not (m.hidden % 128 or m.inter % 128)] \
        if "fp8_block" in quants else []
    mx_models = [m for m in models if m.mxfp4] if "mxfp4" in quants else []
    target = tune_target(args)
    timing = TimingConfig(repeats=5, warmup_calls=1, target_graph_ms=1.0)
    log: list[dict[str, Any]] = []
    entry = replace(effective(target.device))  # the parts not tuned stay as they are
    tokens = ",".join(str(t) for _, bucket in BUCKETS for t in bucket)
    if "bf16" in quants:
        bf16_params = {_name(c): c for c in BF16_CANDIDATES}
        times = measure(models, None,
                        {n: _entry(c, None, None) for n, c in bf16_params.items()}, timing, log)
        entry = replace(entry, rules=_rules(choose(times, models), bf16_params))
    if fp8_models:
        fp8_params = {_name(c): c for c in FP8_CANDIDATES}
        times = measure(fp8_models, "fp8_block",
                        {n: _entry(None, c, None) for n, c in fp8_params.items()}, timing, log)
        fp8_choices = choose(times, fp8_models)
        entry = replace(entry, fp8_rules=_rules(fp8_choices, fp8_params), fp8_backend="triton",
                        fp8_grouped=(GroupedRule(None, "triton"),))
        if torch.cuda.is_available() and cutlass_grouped_runs(torch.device("cuda", target.device)):
            grouped = [c for c in built_grouped_configs() if c.startswith("sm90_")]
            tuned = {"triton": replace(entry, fp8_backend="triton")}
            tuned |= {c: _entry(None, None, c) for c in grouped}
            times = measure(fp8_models, "fp8_block", tuned, timing, log)
            top_k = max(m.topk for m in fp8_models)
            backend = choose(times, fp8_models)
            entry = replace(entry, fp8_backend="cutlass", fp8_grouped=tuple(
                GroupedRule(None if max_t is None else max_t * top_k, name)
                for max_t, name in backend))
    if "bf16" in quants or fp8_models:
        source = target.source(f"; fused_moe layers of {', '.join(names)} at T {tokens}",
                               "bf16 and fp8_block" if fp8_models and "bf16" in quants
                               else "fp8_block" if fp8_models else "bf16")
        entry = replace(entry, source=source)
    if mx_models:
        mx_params = {_name(c): c for c in (*MXFP4_CANDIDATES, *MXFP4_SPLIT_CANDIDATES)}
        times = measure(mx_models, "mxfp4",
                        {n: _entry(None, None, None, c) for n, c in mx_params.items()}, timing,
                        log)
        mx_names = ", ".join(m.name for m in mx_models)
        entry = replace(entry, mxfp4_rules=_rules(choose(times, mx_models), mx_params,
                                                  Mxfp4LaunchRule),
                        mxfp4_source=target.source(f"; fused_moe layers of {mx_names} at T "
                                                   f"{tokens}", "mxfp4 W4A16"))
    elif "mxfp4" in quants:
        print("  moe mxfp4: not tuned (no model with MXFP4 experts among "
              f"{', '.join(names)}; GPT-OSS-20B and GPT-OSS-120B have them)")
    entry.validate("moe")
    target.write(OP_FAMILY, entry)
    for rule in entry.rules:
        print(f"  moe bf16: T <= {rule.max_tokens}: {rule}")
    for rule in entry.fp8_rules:
        print(f"  moe fp8 (Triton): T <= {rule.max_tokens}: {rule}")
    for grouped_rule in entry.fp8_grouped:
        print(f"  moe fp8 path: R <= {grouped_rule.max_rows}: {grouped_rule.config}")
    for rule in entry.mxfp4_rules:
        print(f"  moe mxfp4: T <= {rule.max_tokens}: {rule}")
    print(f"wrote {target.output}")
    write_tune_log(args.log, entry.source, log)
    return 0
