"""`fuseinfer tune fp8-gemm`: time every CUTLASS configuration this build holds on the model
weight shapes of `fuseinfer bench fp8-gemm`, per M bucket, and write the `fp8_gemm` entry.

Timed as the bench times (graph replay, rotated sets past L2) with fewer repeats. Per bucket
the configuration with the lowest geometric-mean time over every (shape, M) of the bucket
wins, among those that ran all of them (one that raises for a shape is logged and skipped
there); when another one is clearly faster (CLEAR_WIN) on the shapes with N <= SMALL_N, a
rule with max_n serves those first. Each winner is checked against the float32 reference
on the shapes it will serve (the next in line takes its place if it fails); adjacent
buckets with the same winners merge. Budget: 21 weight shapes x 11 M x 9 configurations,
about 2-3 minutes on an H200.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .. import fp8_gemm_baselines as baselines
from ..flashinfer_baselines import describe
from ..progress import Progress
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from ..tuning import tune_target, write_tune_log
from .fp8_gemm import MODELS, ours, select_shapes

# (largest M the bucket covers, the Ms timed for it); the last bucket is unbounded.
BUCKETS: tuple[tuple[int | None, tuple[int, ...]], ...] = (
    (16, (1, 8, 16)), (32, (32,)), (64, (64,)), (128, (128,)), (256, (256,)),
    (1024, (512, 1024)), (None, (2048, 8192)))
SMALL_N = 4096
CLEAR_WIN = 0.95  # the small-N winner's geomean must be 5% below the overall winner's there
Key = tuple[int, int, int]  # (n, k, m)


@dataclass(frozen=True)
class BucketChoice:
    max_m: int | None
    config: str
    small_n_config: str | None = None  # serves N <= SMALL_N first, when it wins clearly


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def ranked(times: dict[str, dict[Key, float]], keys: Sequence[Key]) -> list[tuple[float, str]]:
    """(geomean µs over keys, config), best first, among configs that ran every key; when
    none did, those that ran the most keys, each by its geomean over what it ran."""
    full = [(_geomean([t[key] for key in keys]), c) for c, t in times.items()
            if all(key in t for key in keys)]
    if full:
        return sorted(full)
    partial = [(-sum(key in t for key in keys), _geomean([t[key] for key in keys if key in t]),
                c) for c, t in times.items() if any(key in t for key in keys)]
    return [(score, c) for _, score, c in sorted(partial)]


def choose(times: dict[str, dict[Key, float]], shapes: Sequence[tuple[int, int]],
           check: Callable[[str, int, Sequence[tuple[int, int]]], bool]
           ) -> list[BucketChoice]:
    """Per bucket, the winners (verified by `check(config, m, shapes)`), adjacent buckets
    with the same winners merged."""
    small = [s for s in shapes if s[0] <= SMALL_N]
    large = [s for s in shapes if s[0] > SMALL_N]
    choices: list[BucketChoice] = []
    for max_m, ms in BUCKETS:
        def keys(subset: Sequence[tuple[int, int]], ms: Sequence[int] = ms) -> list[Key]:
            return [(n, k, m) for n, k in subset for m in ms]

        def first_passing(subset: Sequence[tuple[int, int]], ms: Sequence[int] = ms) -> str:
            for _, config in ranked(times, keys(subset)):
                if check(config, ms[0], subset):
                    return config
            raise RuntimeError(f"no configuration passed the reference check for M in {ms}")

        overall = ranked(times, keys(shapes))
        if not overall:
            raise RuntimeError(f"no configuration ran any shape for M in {ms}")
        split = None
        if small and large:
            best_small = ranked(times, keys(small))
            winner_there = next((s for s, c in best_small if c == overall[0][1]), None)
            if best_small and best_small[0][1] != overall[0][1] and winner_there is not None and \
                    best_small[0][0] < CLEAR_WIN * winner_there:
                split = first_passing(small)
        config = first_passing(large if split else shapes)
        choice = BucketChoice(max_m, config, split)
        if choices and (choices[-1].config, choices[-1].small_n_config) == (config, split):
            choices[-1] = choice  # the same winners: one rule covers both buckets
        else:
            choices.append(choice)
    return choices


def rules(choices: Sequence[BucketChoice]) -> tuple[Any, ...]:
    """The entry's rules: per bucket an optional small-N rule, then the bucket's rule; the
    last bucket unbounded in M."""
    from ...ops.gemm.fp8_gemm_dispatch import Fp8GemmRule

    out = []
    for i, c in enumerate(choices):
        max_m = None if i == len(choices) - 1 else c.max_m
        if c.small_n_config:
            out.append(Fp8GemmRule(max_m, c.small_n_config, max_n=SMALL_N))
        out.append(Fp8GemmRule(max_m, c.config))
    return tuple(out)


def measure(shapes: Sequence[tuple[int, int]], configs: Sequence[str],
            timing: TimingConfig, log: list[dict[str, Any]], device: str = "cuda"
            ) -> dict[str, dict[Key, float]]:
    """µs of every config on every (shape, M) of the buckets; failures logged, skipped."""
    times: dict[str, dict[Key, float]] = {c: {} for c in configs}
    ms = [m for _, bucket in BUCKETS for m in bucket]
    with Progress(len(shapes) * len(ms), "tune fp8-gemm") as progress:
        for n, k in shapes:
            for m in ms:
                progress.step(f"M={m} N={n} K={k}: {len(configs)} configurations")
                count = buffer_sets(baselines.operand_bytes(m, n, k), l2_cache_bytes(),
                                    cold=True)
                sets = [baselines.make_operands(m, n, k, device) for _ in range(count)]
                for config in configs:
                    entry: dict[str, Any] = {"n": n, "k": k, "m": m, "config": config}
                    try:
                        entry["us"] = time_calls(ours(sets, True, config), timing).median_us
                        times[config][(n, k, m)] = entry["us"]
                    except Exception as error:  # this config cannot run this shape
                        entry["error"] = describe(error)
                    log.append(entry)
                del sets
                if device == "cuda":
                    torch.cuda.empty_cache()
    return times


def reference_check(log: list[dict[str, Any]], device: str = "cuda"
                    ) -> Callable[[str, int, Sequence[tuple[int, int]]], bool]:
    """check(config, m, shapes): its output within AGREE_REL_ERR of the float32 reference
    on every shape at M = m (each verdict logged)."""
    def check(config: str, m: int, shapes: Sequence[tuple[int, int]]) -> bool:
        for n, k in shapes:
            ops = baselines.make_operands(m, n, k, device)
            try:
                err = baselines.checked_rel_err(ours([ops], True, config)[0], ops, "ours")
            except Exception as error:
                log.append({"check": config, "n": n, "k": k, "m": m, "error": describe(error)})
                return False
            log.append({"check": config, "n": n, "k": k, "m": m, "rel_err": err})
            if not err <= baselines.AGREE_REL_ERR:
                return False
        return True
    return check


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models", nargs="+", metavar="MODEL",
                        help=f"tune on these models' shapes (default: all of "
                        f"{', '.join(MODELS)})")


def tune_command(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from ...ops.gemm.fp8_blockwise_mm import built_configs
    from ...ops.gemm.fp8_gemm_dispatch import OP_FAMILY, Fp8GemmDispatch
    from ..kernel_suite import check_known

    check_known("model", args.models or [], MODELS)
    shapes = list(dict.fromkeys((s.n, s.k) for s in select_shapes(args.models)))
    target = tune_target(args)
    configs = built_configs()
    log: list[dict[str, Any]] = []
    timing = TimingConfig(repeats=5, warmup_calls=1, target_graph_ms=1.0)
    times = measure(shapes, configs, timing, log)
    choices = choose(times, shapes, reference_check(log))
    entry = Fp8GemmDispatch("", True, rules(choices))
    ms = ",".join(str(m) for _, bucket in BUCKETS for m in bucket)
    source = target.source(f"; fp8 e4m3 blockwise, {len(shapes)} weight shapes of "
                           f"{', '.join(args.models or MODELS)}; M {ms}")
    entry = replace(entry, source=source)
    target.write(OP_FAMILY, entry)
    for rule in entry.rules:
        bound = f"N <= {rule.max_n}, " if rule.max_n else ""
        print(f"  fp8_gemm: {bound}M <= {rule.max_m}: {rule.config}")
    print(f"wrote {target.output}")
    write_tune_log(args.log, source, log)
    return 0
