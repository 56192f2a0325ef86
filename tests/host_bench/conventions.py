"""The host benchmarks' tagging convention and fixed-seed data (tests/host_bench/conftest.py
says how the `fuseinfer bench host` wrapper reads the tags). Import from a benchmark file:

    from conventions import random_tokens, tag  # tests/host_bench is on sys.path
"""

from __future__ import annotations

import random

SEED = 1234
VOCAB = 32_000


def tag(benchmark, group: str, requests: int | None = None, *, units: int = 1,
        target_us: float | None = None, **extra) -> None:
    """Name `benchmark`'s family (`group`) and size (`requests`) for the wrapper; `units`:
    units of work per measured call (the wrapper also reports the median per unit);
    `target_us`: the target of the per-unit median, in µs. Extra keywords go to
    `benchmark.extra_info` as they are (JSON values)."""
    benchmark.group = group
    info = benchmark.extra_info
    info["group"] = group
    if requests is not None:
        info["requests"] = int(requests)
    info["units"] = int(units)
    if target_us is not None:
        info["target_us"] = float(target_us)
    info.update(extra)


def random_tokens(rng: random.Random, n: int, vocab: int = VOCAB) -> list[int]:
    """`n` token ids drawn from `rng` (ids 1..vocab-1; 0 is left free for padding)."""
    return [rng.randrange(1, vocab) for _ in range(n)]
