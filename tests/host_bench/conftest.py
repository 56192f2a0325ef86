"""Shared fixtures and the tagging convention of the host-side benchmarks.

These are pytest-benchmark benchmarks of the runtime's pure-Python host paths (scheduler,
radix cache, batch building, the server's per-token path). A plain `pytest` runs them as
correctness tests: benchmarking is disabled (tests/conftest.py turns on
`--benchmark-disable` unless a benchmark option such as `--benchmark-only`,
`--benchmark-enable` or `--benchmark-json` is given), so each body runs once and its
asserts check the result. `fuseinfer bench host` (or
`pytest tests/host_bench --benchmark-only --benchmark-json out.json`) gives the numbers.

Convention, read by the `fuseinfer bench host` wrapper (bench/suites/host.py) — every
benchmark calls `tag(benchmark, group, ...)` (tests/host_bench/conventions.py) before it
measures:

    from conventions import random_tokens, tag  # tests/host_bench is on sys.path

    def test_match_10k(benchmark, rng):
        tag(benchmark, "radix.match_shared", requests=10_000, target_us=50)
        result = benchmark(cache.match_prefix, prompt)
        assert result.tokens == ...

- `group`: the family, "<area>.<what>", e.g. "scheduler.decode_step",
  "radix.match_shared", "server.per_token". Benchmarks of one family differ only in size.
  It becomes `benchmark.group` and `extra_info["group"]`.
- `requests=n`: the size the cost should grow with (running requests, streams, cached
  prefixes...), `extra_info["requests"]`. The wrapper reports each family that has both
  requests=64 and requests=1024 as a growth ratio `cost(1024)/cost(64) / 16` (target
  <= 1.2: no worse than linear).
- `units=k`: the measured call does k units of work (k tokens, k streams); the wrapper
  also reports `median / k` per unit. Default 1.
- `target_us=t`: the issue's target for the per-unit median, in µs; the wrapper marks it
  met or missed. Leave it out where there is none.

Each body must be quick when run once (plain `pytest`): build big state in fixtures or in
`benchmark.pedantic(..., setup=...)`, not per call.

Tensor ops run on one CPU thread here (an autouse fixture): CPU tensors stand in for the
device's, and torch's intra-op thread pool on a small shared machine turns a 7 µs gather
into milliseconds of waiting for a busy core, which is no host cost of the runtime.

Data comes from fixed seeds: the `rng` fixture (a random.Random) and `torch_gen` (a
torch.Generator), both seeded with SEED, and `random_tokens(rng, n)` for token ids.
"""

from __future__ import annotations

import random

import pytest
import torch
from conventions import SEED  # tests/host_bench is on sys.path


@pytest.fixture
def rng() -> random.Random:
    return random.Random(SEED)


@pytest.fixture
def torch_gen() -> torch.Generator:
    return torch.Generator().manual_seed(SEED)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
