"""`fuseinfer bench attention --build-only`: build every JIT module a run would use and
time nothing, so the builds can run beside another step (device_run.sh's prebuild:SUITE)
instead of on the bench's clock. Per (kind, model) of the run: our kernel on the cut-down
inputs `check` uses (and the FP8 cache with --fp8-kv), and FlashInfer's plan for the same
case (its module depends on kind, head_dim, dtype, sinks, window and the GQA group, not on
lengths). A module that fails to build is reported, and the rest go on."""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from .. import attention_baselines as base
from .. import flashinfer_baselines
from .attention import Case, check, make_inputs


def prebuild(cases: Sequence[Case], baselines: Sequence[str], page_size: int,
             dtype: torch.dtype = torch.bfloat16, fp8_kv: bool = False) -> int:
    """Build, report each (kind, model) as it finishes; the number that failed."""
    failed = 0
    firsts = {(c.kind, c.model.name): c for c in cases}
    baselines = base.installed(baselines)
    for n, case in enumerate(firsts.values(), 1):
        start = time.perf_counter()
        parts = []
        for name, build in _builds(case, baselines, page_size, dtype, fp8_kv):
            try:
                build()
                parts.append(name)
            except Exception as error:  # reported; the bench reports it again per row
                failed += 1
                parts.append(f"{name} FAILED ({flashinfer_baselines.describe(error)})")
        print(f"[{n}/{len(firsts)}] built {case.kind} {case.model.name}: {', '.join(parts)} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        torch.cuda.empty_cache()
    return failed


def _builds(case: Case, baselines: Sequence[str], page_size: int, dtype: torch.dtype,
            fp8_kv: bool) -> list:
    builds = [("ours", lambda: check(case, page_size, dtype))]
    if fp8_kv and case.kind == "decode":
        builds.append(("ours fp8", lambda: check(case, page_size, dtype, fp8=True)))
    if "flashinfer" in baselines:
        builds.append(("flashinfer", lambda: _plan_flashinfer(case, page_size, dtype)))
    return builds


def _plan_flashinfer(case: Case, page_size: int, dtype: torch.dtype) -> None:
    m = case.model
    kv_lens = [min(n, 256) for n in case.kv_lens[:2]]
    q_lens = [min(q, n) for q, n in zip(case.q_lens[:2], kv_lens, strict=True)]
    x = make_inputs(case, page_size, dtype, kv_lens, q_lens)
    flashinfer_baselines.plan_paged_attention(
        case.kind, q_lens, kv_lens, x.kv.page_table, m.q_heads, m.kv_heads, m.head_dim,
        page_size, dtype, sm_scale=m.head_dim ** -0.5, window_left=m.window_left,
        sinks=x.sinks)
