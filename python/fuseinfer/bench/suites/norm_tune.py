"""`fuseinfer tune norm`: search the norm kernels' launch shapes on the present GPU and
write the winning rules into its dispatch table.

For each op kind (rmsnorm, fused_add_rmsnorm), hidden size and token class, every valid
(threads_per_row, rows_per_block) is timed in bf16 the way `fuseinfer bench norm` times
(graph replay; L2-warm when the data fits in a quarter of L2); the shape with the lowest
geometric-mean time becomes the rule. PDL is kept on if it is not slower.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch

from ...ops.norm.dispatch import OP_FAMILY, NormDispatch, NormLaunchRule, push_to_device
from ..progress import Progress
from ..timing import TimingConfig, buffer_sets, l2_cache_bytes, time_calls
from ..tuning import tune_target, write_tune_log

HIDDEN = (1024, 2048, 2880, 4096, 5120, 7168, 8192, 16384)
# (label, largest token count the rule covers, token counts timed)
TOKEN_CLASSES = (("small", 128, (1, 32, 128)), ("medium", 2048, (512, 2048)),
                 ("large", None, (4096, 16384)))
KINDS = ("rmsnorm", "fused_add")
EPS = 1e-6


def candidates(hidden: int, vec: int = 8) -> list[tuple[int, int]]:
    """Launch shapes the kernel accepts that hold the row in registers (<= 8 vectors per
    thread) without idle warps."""
    num_vec = math.ceil(hidden / vec)
    shapes = []
    for tpr in (4, 8, 16, 32, 64, 128, 256, 512, 1024):
        if math.ceil(num_vec / tpr) > 8:
            continue
        if tpr >= 32 and tpr > math.ceil(num_vec / 32) * 32:
            continue
        if tpr < 32 and num_vec < tpr:
            continue
        for rpb in (1, 2, 4, 8, 16, 32):
            threads = tpr * rpb
            if 32 <= threads <= 1024 and threads % 32 == 0:
                shapes.append((tpr, rpb))
    return shapes


def _single_rule(tpr: int, rpb: int, pdl: bool) -> NormDispatch:
    rule = (NormLaunchRule(None, None, tpr, rpb),)
    return NormDispatch("tuning", pdl, rule, rule)


def time_kind(kind: str, hidden: int, tokens: int, config: TimingConfig) -> float:
    """Median microseconds of one bf16 call of `kind` at this shape."""
    tensors = 4 if kind == "fused_add" else 2
    nbytes = tensors * tokens * hidden * 2
    w = torch.randn(hidden, device="cuda", dtype=torch.bfloat16)
    sets = [(torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16),
             torch.randn(tokens, hidden, device="cuda", dtype=torch.bfloat16))
            for _ in range(buffer_sets(nbytes, l2_cache_bytes()))]
    if kind == "fused_add":
        fn = torch.ops.fuseinfer.fused_add_rmsnorm
        calls = [lambda a=a, b=b: fn(a, b, w, EPS, None) for a, b in sets]
    else:
        fn = torch.ops.fuseinfer.rmsnorm
        calls = [lambda a=a, b=b: fn(b, a, w, EPS, None) for a, b in sets]
    return time_calls(calls, config).median_us


def _geomean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def tune(device: int = 0, hidden_sizes: Sequence[int] = HIDDEN,
         config: TimingConfig | None = None
         ) -> tuple[dict[str, tuple[NormLaunchRule, ...]], list[dict[str, Any]]]:
    """Best rule per (kind, hidden, token class); returns rules per kind and every timing."""
    from ...ops.norm.rmsnorm import _load_cuda

    _load_cuda()
    config = config or TimingConfig(repeats=7, target_graph_ms=1.0, warmup_calls=2)
    rules: dict[str, list[NormLaunchRule]] = {kind: [] for kind in KINDS}
    log: list[dict[str, Any]] = []
    total = len(KINDS) * sum(len(candidates(h)) for h in hidden_sizes)
    with Progress(total, "tune norm") as progress:
        for kind in KINDS:
            for hidden in hidden_sizes:
                best: dict[str, tuple[float, int, int]] = {}
                for tpr, rpb in candidates(hidden):
                    progress.step(f"{kind} hidden={hidden} threads_per_row={tpr} "
                                  f"rows_per_block={rpb}")
                    push_to_device(device, _single_rule(tpr, rpb, True))
                    for label, _, tokens in TOKEN_CLASSES:
                        times = [time_kind(kind, hidden, t, config) for t in tokens]
                        log.append({"kind": kind, "hidden": hidden, "threads_per_row": tpr,
                                    "rows_per_block": rpb, "class": label,
                                    "tokens": list(tokens), "us": times})
                        score = _geomean(times)
                        if label not in best or score < best[label][0]:
                            best[label] = (score, tpr, rpb)
                for label, max_tokens, _ in TOKEN_CLASSES:
                    _, tpr, rpb = best[label]
                    rules[kind].append(NormLaunchRule(hidden, max_tokens, tpr, rpb))
            largest = [r for r in rules[kind] if r.max_hidden == max(hidden_sizes)]
            rules[kind].append(replace(largest[-1], max_hidden=None, max_tokens=None))
    return {kind: tuple(r) for kind, r in rules.items()}, log


def pdl_helps(device: int, rules: dict[str, tuple[NormLaunchRule, ...]],
              config: TimingConfig | None = None) -> tuple[bool, dict[str, float]]:
    """Compare PDL on and off with the tuned rules at small token counts."""
    config = config or TimingConfig(repeats=9, target_graph_ms=1.0, warmup_calls=2)
    times: dict[str, float] = {}
    for pdl in (True, False):
        push_to_device(device, NormDispatch("tuning", pdl, rules["rmsnorm"],
                                            rules["fused_add"]))
        samples = [time_kind("fused_add", 4096, t, config) for t in TOKEN_CLASSES[0][2]]
        times["pdl_on" if pdl else "pdl_off"] = _geomean(samples)
    return times["pdl_on"] <= times["pdl_off"], times


def tune_command(args: argparse.Namespace) -> int:
    """`fuseinfer tune norm`: tune, write the entry, push it to the device, report."""
    target = tune_target(args)
    hidden = tuple(sorted(set(args.hidden))) if args.hidden else HIDDEN
    rules, log = tune(target.device, hidden)
    pdl, pdl_times = pdl_helps(target.device, rules)
    source = target.source(f"; PDL on {pdl_times['pdl_on']:.2f} us vs off "
                           f"{pdl_times['pdl_off']:.2f} us, fused_add_rmsnorm hidden 4096, "
                           "<= 128 tokens")
    entry = NormDispatch(source=source, enable_pdl=pdl, rmsnorm_rules=rules["rmsnorm"],
                         fused_add_rules=rules["fused_add"])
    target.write(OP_FAMILY, entry)
    push_to_device(target.device, entry)
    for kind, kind_rules in rules.items():
        for rule in kind_rules:
            print(f"  {kind}: hidden <= {rule.max_hidden}  tokens <= {rule.max_tokens}: "
                  f"{rule.threads_per_row} threads/row, {rule.rows_per_block} rows/block")
    print(f"PDL {'on' if pdl else 'off'} ({pdl_times})")
    print(f"wrote {target.output}")
    write_tune_log(args.log, source, log)
    return 0
