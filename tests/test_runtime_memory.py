"""Runtime memory on the CPU: the page allocator, KV and request pools, and the radix prefix
cache (insert, match, split, page alignment, locks, LRU eviction, disabled mode)."""

from __future__ import annotations

import random

import pytest
import torch

from fuseinfer.models.kv_cache import FP8, KvCacheConfig, PagedKvCache
from fuseinfer.runtime.kv_pool import PageAllocator, ReqToTokenPool, pages_for_budget
from fuseinfer.runtime.radix_cache import RadixCache


def evictable_pages(cache: RadixCache) -> int:
    """Cached pages no running request holds (what eviction could free)."""
    return cache.cached_pages - cache.locked_pages


def test_allocator_hands_out_each_page_once_and_never_page_zero():
    a = PageAllocator(9)
    got = a.alloc(8)
    assert got is not None and sorted(got) == list(range(1, 9))
    assert a.alloc(1) is None and a.available == 0
    a.free(got[:3])
    assert a.available == 3
    with pytest.raises(ValueError, match="freed twice"):
        a.free(got[:1])
    with pytest.raises(ValueError, match="not a page"):
        a.free([0])
    assert a.alloc(4) is None and a.available == 3  # all or nothing
    assert a.usage() == 5 / 8


def test_budget_sizing_and_pools():
    cfg = KvCacheConfig(num_layers=2, num_kv_heads=2, head_dim=64, page_size=4,
                        dtype=torch.bfloat16)
    assert cfg.bytes_per_page() == 2 * 2 * 4 * 2 * 64 * 2
    assert pages_for_budget(cfg, 10 * cfg.bytes_per_page(), 0.5, 0) == 5
    with pytest.raises(ValueError, match="no room for the KV cache"):
        pages_for_budget(cfg, 10 * cfg.bytes_per_page(), 0.5, 4 * cfg.bytes_per_page())
    cache = PagedKvCache(cfg, 6, "cpu")
    assert cache.k[0].shape == (6, 4, 2, 64) and len(cache.v) == 2 and cache.page_size == 4
    assert cache.k_scale[0] is None
    allocator = PageAllocator(cache.num_pages)
    assert allocator.usage() == 0.0
    allocator.alloc(5)
    assert allocator.usage() == 1.0
    fp8 = PagedKvCache(KvCacheConfig(1, 1, 64, 1, FP8), 3, "cpu")
    assert fp8.k[0].dtype == FP8 and fp8.k_scale[0].item() == 1.0
    with pytest.raises(ValueError, match="KV dtype"):
        PagedKvCache(KvCacheConfig(1, 1, 64, 1, torch.int8), 3, "cpu")


def test_request_pool_page_table_and_slots():
    pool = ReqToTokenPool(max_requests=2, max_pages_per_request=3, device="cpu")
    r = pool.alloc()
    assert r is not None
    pool.append_pages(r, [5, 2])
    assert pool.page_table[r].tolist() == [5, 2, 0]
    assert pool.slots_for(r, 2, 6, page_size=4) == [22, 23, 8, 9]
    with pytest.raises(ValueError, match="more than the 3"):
        pool.append_pages(r, [7, 8])
    pool.append_pages(r, [7])
    assert pool.page_table[r].tolist() == [5, 2, 7] and pool.pages[r] == [5, 2, 7]
    assert pool.alloc() is not None and pool.alloc() is None
    pool.free(r)
    assert pool.page_table[r].tolist() == [0, 0, 0] and pool.available == 1


class Pages:
    """A fake allocator that records what the cache frees."""

    def __init__(self) -> None:
        self.freed: list[int] = []

    def __call__(self, pages) -> None:
        self.freed.extend(pages)


def test_request_pool_journal_replays_onto_another_pool():
    """What a tensor-parallel rank 0 logs, another rank's pool replays to the same table."""
    rank0, rank1 = ReqToTokenPool(4, 6, "cpu"), ReqToTokenPool(4, 6, "cpu")
    rank0.journal = []
    rng = random.Random(3)
    live: list[int] = []
    for _ in range(40):
        if live and (rng.random() < 0.3 or rank0.available == 0):
            rank0.free(live.pop(rng.randrange(len(live))))
        elif rng.random() < 0.5 and rank0.available:
            live.append(rank0.alloc())
        elif live:
            slot = rng.choice(live)
            room = rank0.max_pages - len(rank0.pages[slot])
            rank0.append_pages(slot, [rng.randrange(1, 50) for _ in range(rng.randint(0, room))])
        rank1.replay(rank0.journal)
        rank0.journal.clear()
        assert torch.equal(rank0.page_table, rank1.page_table)
        assert rank0.pages == rank1.pages and rank0.available == rank1.available
    with pytest.raises(ValueError, match="journal entry"):
        rank1.replay([("resize", 0)])


def test_match_is_page_aligned_and_splits_nodes():
    freed = Pages()
    cache = RadixCache(page_size=2, free_pages=freed)
    assert cache.insert([1, 2, 3, 4, 5, 6], [10, 11, 12]) == 0
    m = cache.match_prefix([1, 2, 3, 4, 9, 9, 9])
    assert (m.tokens, m.pages) == (4, [10, 11])
    assert m.node.key == (1, 2, 3, 4)  # the node was split at the match
    assert cache.match_prefix([1, 2, 3]).tokens == 2  # a partial page never matches
    assert cache.match_prefix([1, 9]).tokens == 0
    # Inserting a longer sequence frees the pages that duplicate cached ones.
    assert cache.insert([1, 2, 3, 4, 7, 8], [20, 21, 22]) == 4
    assert freed.freed == [20, 21]
    assert cache.match_prefix([1, 2, 3, 4, 7, 8]).pages == [10, 11, 22]
    assert cache.match_prefix([1, 2, 3, 4, 5, 6]).pages == [10, 11, 12]
    assert cache.cached_pages == 4


def test_locks_protect_pages_and_eviction_is_lru():
    freed = Pages()
    cache = RadixCache(page_size=1, free_pages=freed)
    cache.insert([1, 2, 3], [1, 2, 3])
    cache.insert([1, 2, 9], [1, 2, 9])  # frees the duplicate 1, 2
    freed.freed.clear()
    cache.insert([5, 6], [5, 6])
    locked = cache.match_prefix([1, 2, 3]).node
    cache.lock(locked)
    assert cache.locked_pages == 3 and evictable_pages(cache) == 3  # [9] and [5, 6]
    cache.match_prefix([5, 6])  # touch: [9] is now the least recent
    assert cache.evict(1) == 1 and freed.freed == [9]
    assert cache.evict(10) == 2 and freed.freed == [9, 5, 6]  # locked path survives
    assert cache.match_prefix([1, 2, 3]).tokens == 3
    cache.unlock(locked)
    assert cache.evict(10) == 3 and cache.cached_pages == 0
    with pytest.raises(ValueError, match="not locked"):
        cache.unlock(locked)


def test_disabled_cache_matches_nothing_and_frees_inserts():
    freed = Pages()
    cache = RadixCache(page_size=1, free_pages=freed, disable=True)
    assert cache.insert([1, 2], [4, 5]) == 0 and freed.freed == [4, 5]
    assert cache.match_prefix([1, 2]).tokens == 0


def test_random_workload_keeps_page_accounting():
    """Random inserts, matches, locks and evictions: every page is either cached or freed,
    never both, and what a match returns is what was inserted for those tokens."""
    rng = random.Random(0)
    allocator = PageAllocator(400)
    cache = RadixCache(page_size=2, free_pages=allocator.free)
    truth: dict[tuple[int, ...], int] = {}  # a page's tokens (with its prefix) -> page
    held = []
    for _ in range(300):
        seq = [rng.randrange(3) for _ in range(2 * rng.randrange(1, 6))]
        m = cache.match_prefix(seq)
        for i, page in enumerate(m.pages):
            assert truth[tuple(seq[:2 * (i + 1)])] == page
        new = allocator.alloc(len(seq) // 2 - len(m.pages))
        if new is None:
            cache.evict(len(seq))
            continue
        cache.insert(seq, m.pages + new)
        for i, page in enumerate(m.pages + new):
            truth.setdefault(tuple(seq[:2 * (i + 1)]), page)
        if rng.random() < 0.3:
            node = cache.match_prefix(seq).node
            cache.lock(node)
            held.append(node)
        if held and rng.random() < 0.3:
            cache.unlock(held.pop(rng.randrange(len(held))))
        if rng.random() < 0.2:
            cache.evict(rng.randrange(1, 8))
            live = set()
            stack = [cache.root]
            while stack:
                n = stack.pop()
                live.update(n.pages)
                stack.extend(n.children.values())
            truth = {k: p for k, p in truth.items() if p in live}
        assert allocator.available + cache.cached_pages == allocator.capacity


def test_reset_frees_everything_locked_or_not():
    freed = Pages()
    cache = RadixCache(page_size=1, free_pages=freed)
    cache.insert([1, 2], [3, 4])
    cache.insert([1, 5], [3, 6])
    cache.lock(cache.match_prefix([1, 2]).node)
    cache.reset()
    assert sorted(freed.freed) == [3, 4, 6] and cache.cached_pages == 0
    assert cache.locked_pages == 0 and cache.match_prefix([1, 2]).tokens == 0


def _lru_order(cache: RadixCache, pages_needed: int) -> list[int]:
    """The pages `evict(pages_needed)` should free, in order, found the slow way: every
    unlocked leaf of the tree in a heap by last use, a parent joining once it is a leaf."""
    import heapq

    leaves, stack = [], [cache.root]
    while stack:
        node = stack.pop()
        stack.extend(node.children.values())
        if not node.children and node is not cache.root and node.lock_ref == 0:
            leaves.append((node.last_access, id(node), node))
    heapq.heapify(leaves)
    children = {}  # node -> children left
    out = []
    while len(out) < pages_needed and leaves:
        _, _, leaf = heapq.heappop(leaves)
        out += leaf.pages
        parent = leaf.parent
        children[parent] = children.get(parent, len(parent.children)) - 1
        if parent is not cache.root and not children[parent] and parent.lock_ref == 0:
            heapq.heappush(leaves, (parent.last_access, id(parent), parent))
    return out


def test_eviction_order_is_lru_over_the_whole_tree():
    """Eviction keeps its own queue of evictable leaves; under random inserts, matches
    (which reorder it), splits, locks and unlocks it frees what a scan of the whole tree
    would, in the same order."""
    rng = random.Random(3)
    allocator = PageAllocator(300)
    freed = []

    def free(pages):
        freed.extend(pages)
        allocator.free(pages)

    cache = RadixCache(page_size=2, free_pages=free)
    held = []
    for _ in range(2000):
        seq = [rng.randrange(3) for _ in range(2 * rng.randrange(1, 7))]
        m = cache.match_prefix(seq)
        new = allocator.alloc(len(seq) // 2 - len(m.pages))
        if new is not None:
            cache.insert(seq, m.pages + new)
        if rng.random() < 0.3:
            node = cache.match_prefix(seq).node
            cache.lock(node)
            held.append(node)
        if held and rng.random() < 0.35:
            cache.unlock(held.pop(rng.randrange(len(held))))
        if new is None or rng.random() < 0.2:
            need = rng.randrange(1, 12)
            expected = _lru_order(cache, need)
            freed.clear()
            assert cache.evict(need) == len(expected) and freed == expected
        assert allocator.available + cache.cached_pages == allocator.capacity
    assert len(cache._evictable) <= 2 * cache.cached_pages + 1  # no stale entries pile up


def test_unlock_after_reset_leaves_the_new_cache_alone():
    freed = Pages()
    cache = RadixCache(page_size=1, free_pages=freed)
    cache.insert([1, 2], [3, 4])
    node = cache.match_prefix([1, 2]).node
    cache.lock(node)
    cache.reset()
    cache.insert([7], [8])
    cache.unlock(node)  # a request that held a dropped node finishes
    assert cache.evict(5) == 1 and freed.freed == [3, 4, 8]


def test_host_tensor_is_what_torch_tensor_gives():
    """to_device's fast packing (a C array viewed as a tensor) gives torch.tensor's values
    and dtype, and falls back to torch's conversion (and its errors) for anything else."""
    from fuseinfer.ops.host_copy import host_tensor, to_device

    cases = [([3, -1, 2**40], torch.int64), ([7, 0, -5, 2**31 - 1], torch.int32),
             ([0.1, 1e-8, -3.5, 1e30], torch.float32), ([0.1, 2.5], torch.float64),
             ([True, False], torch.int64), ([1, 0], torch.bool), ([1.7, -2.2], torch.int64),
             ([], torch.int64), ([1, 2], torch.float32)]
    for values, dtype in cases:
        got, want = host_tensor(values, dtype), torch.tensor(values, dtype=dtype)
        assert got.dtype == want.dtype and torch.equal(got, want), (values, dtype)
    with pytest.raises((RuntimeError, OverflowError)):
        host_tensor([2**40], torch.int32)
    out = torch.zeros(4, dtype=torch.int32)
    assert to_device([1, 2], torch.int32, "cpu", out=out[1:3]).tolist() == [1, 2]
    assert out.tolist() == [0, 1, 2, 0]
