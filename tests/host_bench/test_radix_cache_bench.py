"""Radix prefix cache: match and insert against many cached prefixes, and eviction under
pressure, at the engine's default page size (64).

Two workloads of cached prefixes (conversations whose KV the cache kept):
- shared: 16 system prompts (500-1000 tokens), each cached prefix one of them followed by
  a user suffix (64-512 tokens);
- random: unrelated sequences of 256-2048 tokens.
A matched prompt is a cached conversation plus a new turn, 2048 tokens in all; an inserted
one is a new conversation (a system prompt and a new suffix, or new random tokens).
`requests` is the number of cached prefixes (64, 1024, 10k): match, insert and evict should
not slow down with it. Each workload's caches are built once per module; the eviction
benchmarks come last, as they evict from them.
"""

from __future__ import annotations

import random

import pytest
import torch
from conventions import SEED, tag  # tests/host_bench is on sys.path

from fuseinfer.runtime.kv_pool import PageAllocator
from fuseinfer.runtime.radix_cache import RadixCache

PAGE = 64  # EngineArgs' default page size
VOCAB = 32_000
PROMPT = 2048  # tokens of a matched prompt
SYSTEM_PROMPTS = 16
SIZES = (64, 1024, 10_000)  # cached prefixes
ROUNDS = 300  # measured rounds of the benchmarks that add to the cache (insert, evict)
MATCH_TARGET_US = 50.0


def _tokens(gen: torch.Generator, n: int) -> list[int]:
    return torch.randint(1, VOCAB, (n,), generator=gen).tolist()


class Workload:
    """A radix cache holding `n` prefixes of one workload ("shared" or "random"), its pages
    numbered 1, 2, ... in insertion order, and more sequences like them on demand."""

    def __init__(self, kind: str, n: int) -> None:
        self.kind = kind
        self.gen = torch.Generator().manual_seed(SEED + 2 * n + (kind == "random"))
        self.systems = [_tokens(self.gen, random.Random(SEED + i).randrange(500, 1001))
                        for i in range(SYSTEM_PROMPTS)]
        self.freed: list[int] = []
        self.cache = RadixCache(PAGE, self.freed.extend)
        self.next_page = 1
        self.made = 0
        self.seqs = [self.new_sequence() for _ in range(n)]
        for seq in self.seqs:
            self.cache.insert(seq, self.pages_for(seq))
        assert not self.freed  # the cached pages were reused, never handed in twice

    def new_sequence(self) -> list[int]:
        self.made += 1
        if self.kind == "shared":
            suffix = int(torch.randint(64, 513, (1,), generator=self.gen))
            return self.systems[self.made % SYSTEM_PROMPTS] + _tokens(self.gen, suffix)
        return _tokens(self.gen, int(torch.randint(256, PROMPT + 1, (1,), generator=self.gen)))

    def cached_start(self) -> int:
        """Tokens of a new sequence (the next `new_sequence`) already cached: its system
        prompt's whole pages (none for random sequences)."""
        if self.kind == "random":
            return 0
        return len(self.systems[(self.made + 1) % SYSTEM_PROMPTS]) // PAGE * PAGE

    def pages_for(self, seq: list[int]) -> list[int]:
        """The pages of a request for `seq` when it finishes: those of its cached prefix (it
        was admitted with them) and new ones for the rest."""
        cached = self.cache.match_prefix(seq).pages
        n = len(seq) // PAGE - len(cached)
        self.next_page += n
        return cached + list(range(self.next_page - n, self.next_page))

    def prompt(self, i: int) -> tuple[list[int], int]:
        """A 2048-token prompt that continues cached sequence i, and the tokens it matches."""
        seq = self.seqs[i]
        return (seq + _tokens(self.gen, PROMPT))[:PROMPT], min(len(seq), PROMPT) // PAGE * PAGE


@pytest.fixture(scope="module")
def workloads():
    built: dict[tuple[str, int], Workload] = {}

    def get(kind: str, n: int) -> Workload:
        if (kind, n) not in built:
            built[kind, n] = Workload(kind, n)
        return built[kind, n]

    return get


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["shared", "random"])
def test_match_2k_prompt(benchmark, workloads, kind, n):
    w = workloads(kind, n)
    # the longest cached sequence of the last few: a long match (random: up to all 2048)
    i = max(range(n - 8, n), key=lambda j: len(w.seqs[j]))
    prompt, matched = w.prompt(i)
    tag(benchmark, f"radix.match_{kind}", n, target_us=MATCH_TARGET_US if n == SIZES[-1]
        else None, prompt_tokens=PROMPT, matched_tokens=matched)
    result = benchmark(w.cache.match_prefix, prompt)
    assert result.tokens == matched and len(result.pages) == matched // PAGE


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", ["shared", "random"])
def test_insert(benchmark, workloads, kind, n):
    """A finished request's pages go into the cache (what the scheduler does when a request
    leaves): each round inserts a new conversation."""
    w = workloads(kind, n)
    tag(benchmark, f"radix.insert_{kind}", n)
    done: list[tuple[int, int]] = []

    def setup():
        start = w.cached_start()
        seq = w.new_sequence()
        return (seq, w.pages_for(seq), start), {}

    def insert(seq, pages, start):
        done.append((w.cache.insert(seq, pages), start))

    benchmark.pedantic(insert, setup=setup, rounds=ROUNDS, warmup_rounds=5)
    assert done and all(got == start for got, start in done)
    assert not w.freed  # the cached pages were handed back as they are, never freed


@pytest.mark.parametrize("n", SIZES)
def test_evict_under_pressure(benchmark, workloads, n):
    """The pool is full of cached prefixes; each round a new request needs its pages, so
    the least recently used entries are evicted first (`evict`, then `alloc`, then the
    finished request's `insert`, as the scheduler does)."""
    w = workloads("random", n)
    allocator = PageAllocator(w.next_page)
    assert allocator.alloc(allocator.available) is not None  # every page cached or in use
    w.cache.free_pages = allocator.free
    w.next_page = allocator.num_pages  # pages now come from the allocator only
    tag(benchmark, "radix.evict", n)
    evicted: list[tuple[int, int]] = []

    def setup():
        return (w.new_sequence(),), {}

    def admit(seq):
        need = len(seq) // PAGE
        short = need - allocator.available
        freed = w.cache.evict(short) if short > 0 else 0
        evicted.append((freed, short))
        pages = allocator.alloc(need)
        assert pages is not None
        w.cache.insert(seq, pages)

    benchmark.pedantic(admit, setup=setup, rounds=ROUNDS, warmup_rounds=5)
    assert any(short > 0 for _, short in evicted)  # the pool was under pressure
    assert all(freed >= short for freed, short in evicted)
    assert allocator.available + w.cache.cached_pages == allocator.capacity
