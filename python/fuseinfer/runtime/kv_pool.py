"""KV memory bookkeeping: the page allocator, the request table that maps each request's
token positions to pages (ReqToTokenPool), and the sizing of the cache from a memory
budget. The K/V buffers themselves are the model's (models/kv_cache.py).

Pages are the unit of allocation: page p holds slots p * page_size .. p * page_size +
page_size - 1 of every layer's cache. Page 0 is reserved and never handed out: padded
batch rows and unused page-table entries point at it, so a stray read stays in bounds.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..models.kv_cache import KvCacheConfig
from ..ops.host_copy import to_device


def pages_for_budget(config: KvCacheConfig, total_bytes: int, mem_fraction_static: float,
                     used_bytes: int) -> int:
    """Pages that fit when weights and everything else static may use `mem_fraction_static`
    of `total_bytes` and `used_bytes` are already taken (weights, activations reserve)."""
    if not 0.0 < mem_fraction_static <= 1.0:
        raise ValueError(f"mem_fraction_static must be in (0, 1], got {mem_fraction_static}")
    budget = int(total_bytes * mem_fraction_static) - used_bytes
    pages = budget // config.bytes_per_page()
    if pages < 2:
        raise ValueError(
            f"no room for the KV cache: {budget / 2**20:.0f} MiB left of "
            f"{mem_fraction_static:.2f} x {total_bytes / 2**30:.1f} GiB after "
            f"{used_bytes / 2**30:.2f} GiB in use; one page of {config.page_size} tokens "
            f"needs {config.bytes_per_page() / 2**20:.2f} MiB (raise --mem-fraction-static)")
    return pages


class PageAllocator:
    """Free-list allocator of page ids 1 .. num_pages - 1 (page 0 is the reserved pad)."""

    def __init__(self, num_pages: int) -> None:
        if num_pages < 2:
            raise ValueError(f"num_pages must be >= 2 (page 0 is reserved), got {num_pages}")
        self.num_pages = num_pages
        self._free = list(range(num_pages - 1, 0, -1))  # pop() hands out low ids first
        self._is_free = [False] + [True] * (num_pages - 1)

    @property
    def available(self) -> int:
        return len(self._free)

    @property
    def capacity(self) -> int:
        return self.num_pages - 1

    def usage(self) -> float:
        """Fraction of allocatable pages in use."""
        return 1.0 - len(self._free) / self.capacity

    def alloc(self, n: int) -> list[int] | None:
        """n pages, or None (nothing taken) when fewer are free."""
        if n < 0:
            raise ValueError(f"cannot allocate {n} pages")
        if n > len(self._free):
            return None
        pages = [self._free.pop() for _ in range(n)]
        for p in pages:
            self._is_free[p] = False
        return pages

    def free(self, pages: Sequence[int]) -> None:
        for p in pages:
            if not 0 < p < self.num_pages:
                raise ValueError(f"page {p} is not a page of this pool")
            if self._is_free[p]:
                raise ValueError(f"page {p} freed twice")
            self._is_free[p] = True
            self._free.append(p)


class ReqToTokenPool:
    """Request slots and their page tables: row r of `page_table` (int32, on the device)
    lists the pages of the request in slot r, in token order; unused entries are page 0.
    The host keeps each row's pages too, so the scheduler never reads the device.

    With a `journal` (a list), every change is also logged as ("alloc", slot), ("append",
    slot, pages) or ("free", slot): the other tensor-parallel ranks `replay` them on their
    own copy of the table."""

    def __init__(self, max_requests: int, max_pages_per_request: int,
                 device: torch.device | str) -> None:
        self.page_table = torch.zeros(max_requests, max_pages_per_request, dtype=torch.int32,
                                      device=device)
        self.max_pages = max_pages_per_request
        self._free = list(range(max_requests - 1, -1, -1))
        self.pages: dict[int, list[int]] = {}
        self.journal: list[tuple] | None = None

    def replay(self, ops: Sequence[tuple]) -> None:
        """Apply another pool's journal entries, in order, to this one."""
        for op in ops:
            if op[0] == "alloc":
                self._free.remove(op[1])
                self.pages[op[1]] = []
            elif op[0] == "append":
                self.append_pages(op[1], op[2])
            elif op[0] == "free":
                self.free(op[1])
            else:
                raise ValueError(f"unknown page-table journal entry {op!r}")

    @property
    def available(self) -> int:
        return len(self._free)

    def alloc(self) -> int | None:
        if not self._free:
            return None
        slot = self._free.pop()
        self.pages[slot] = []
        if self.journal is not None:
            self.journal.append(("alloc", slot))
        return slot

    def free(self, slot: int) -> None:
        if slot not in self.pages:
            raise ValueError(f"request slot {slot} is not in use")
        del self.pages[slot]
        self.page_table[slot].zero_()
        self._free.append(slot)
        if self.journal is not None:
            self.journal.append(("free", slot))

    def append_pages(self, slot: int, new_pages: Sequence[int]) -> None:
        """Extend the request's page list (host and device) with `new_pages`."""
        have = self.pages[slot]
        if len(have) + len(new_pages) > self.max_pages:
            raise ValueError(f"request slot {slot} would need {len(have) + len(new_pages)} "
                             f"pages, more than the {self.max_pages} a request may hold")
        if new_pages:
            start = len(have)
            to_device(list(new_pages), torch.int32, self.page_table.device,
                      out=self.page_table[slot, start:start + len(new_pages)])
            have.extend(new_pages)
            if self.journal is not None:
                self.journal.append(("append", slot, list(new_pages)))

    def slots_for(self, slot: int, start: int, end: int, page_size: int) -> list[int]:
        """KV slot indices of the request's token positions start .. end - 1."""
        pages = self.pages[slot]
        return [pages[p // page_size] * page_size + p % page_size for p in range(start, end)]
