"""`fuseinfer bench SUITE --build-only` for the suites that have it: build every JIT module a
run would use and time nothing, so the builds can run beside another step
(device_run.sh's prebuild:SUITE) instead of on the bench's clock. The suite names what to
build per group of cases (its own kernels on small inputs, a baseline's plan); this runs
them, reports each group as it finishes, and goes on past a build that fails."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from .flashinfer_baselines import describe

Build = tuple[str, Callable[[], object]]  # (name, call that builds it)


def run_builds(groups: Sequence[tuple[str, Sequence[Build]]]) -> int:
    """Run each group's builds in order; the number that failed."""
    failed = 0
    for n, (label, builds) in enumerate(groups, 1):
        start = time.perf_counter()
        parts = []
        for name, build in builds:
            try:
                build()
                parts.append(name)
            except Exception as error:  # reported; the bench reports it again per row
                failed += 1
                parts.append(f"{name} FAILED ({describe(error)})")
        print(f"[{n}/{len(groups)}] built {label}: {', '.join(parts)} "
              f"in {time.perf_counter() - start:.0f} s", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return failed
