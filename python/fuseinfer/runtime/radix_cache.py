"""Radix prefix cache: token-id sequences -> the KV pages that hold them.

Keys are whole pages: a node's key is a run of token ids whose length is a multiple of
page_size, and it owns one page per page_size tokens; a request's partial last page is
never shared. Children are indexed by their first page of tokens, so two children never
share a first page and a match walks one child per step.

A node is locked (lock_ref > 0) while a running request uses its pages; locking a node
locks its ancestors too. Only unlocked leaves are evicted, least recently used first; an
evicted leaf's parent may become an evictable leaf in turn. Pages handed to `insert` that
duplicate cached ones are returned for the caller to free.

Costs do not grow with the number of cached prefixes: a match or insert walks one child
per node of its own path (comparing a whole node's key at once), and eviction pops a heap
of the leaves that became evictable (queued once each, when they became unlocked leaves;
an entry that went stale is dropped or re-queued when it reaches the top), instead of
collecting every leaf of the tree on each call.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

_clock = itertools.count()


@dataclass(eq=False)
class RadixNode:
    key: tuple[int, ...] = ()
    pages: list[int] = field(default_factory=list)
    parent: RadixNode | None = None
    children: dict[tuple[int, ...], RadixNode] = field(default_factory=dict)
    lock_ref: int = 0
    last_access: int = 0
    queued: bool = False  # has an entry in the cache's eviction heap

    def touch(self) -> None:
        self.last_access = next(_clock)


@dataclass(frozen=True)
class PrefixMatch:
    pages: list[int]  # pages of the matched tokens, in order
    tokens: int  # matched token count (a multiple of page_size)
    node: RadixNode  # deepest matched node: lock it while the pages are in use


class RadixCache:
    def __init__(self, page_size: int, free_pages: Callable[[Sequence[int]], None],
                 disable: bool = False) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        self.page_size = page_size
        self.free_pages = free_pages
        self.disable = disable
        self.root = RadixNode()
        self.root.lock_ref = 1  # never evicted
        self.cached_pages = 0
        self.locked_pages = 0
        # (last_access when queued, id, node) of the nodes that were unlocked leaves when
        # queued; `evict` skips the ones that no longer are and re-queues the ones used since
        self._evictable: list[tuple[int, int, RadixNode]] = []

    # ---- lookup -------------------------------------------------------------------------
    def _page_key(self, tokens: Sequence[int], at: int) -> tuple[int, ...]:
        return tuple(tokens[at:at + self.page_size])

    def match_prefix(self, tokens: Sequence[int]) -> PrefixMatch:
        """The longest cached page-aligned prefix of `tokens`. A partial match inside a
        node splits it, so the returned node ends exactly at the match."""
        usable = len(tokens) // self.page_size * self.page_size
        node, at, pages = self.root, 0, []
        if self.disable:
            return PrefixMatch([], 0, self.root)
        while at < usable:
            child = node.children.get(self._page_key(tokens, at))
            if child is None:
                break
            end = at + len(child.key)
            # the common case first: the whole node matches, compared at once
            if end > usable or tuple(tokens[at:end]) != child.key:
                child = self._split(child, self._common_pages(child.key, tokens, at))
            pages.extend(child.pages)
            at += len(child.key)
            node = child
            node.touch()
        return PrefixMatch(pages, at, node)

    def _common_pages(self, key: tuple[int, ...], tokens: Sequence[int], at: int) -> int:
        """Whole pages that `key` shares with tokens[at:]."""
        n, p = 0, self.page_size
        while (n + 1) * p <= len(key) and at + (n + 1) * p <= len(tokens) \
                and key[n * p:(n + 1) * p] == tuple(tokens[at + n * p:at + (n + 1) * p]):
            n += 1
        return n

    def _split(self, node: RadixNode, pages: int) -> RadixNode:
        """Cut `node` after `pages` pages (fewer than it has); returns the new upper part
        (node's new parent)."""
        cut = pages * self.page_size
        upper = RadixNode(key=node.key[:cut], pages=node.pages[:pages], parent=node.parent,
                          lock_ref=node.lock_ref, last_access=node.last_access)
        assert node.parent is not None
        node.parent.children[self._page_key(node.key, 0)] = upper
        node.key, node.pages, node.parent = node.key[cut:], node.pages[pages:], upper
        upper.children[self._page_key(node.key, 0)] = node
        return upper

    # ---- insert -------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], pages: Sequence[int]) -> int:
        """Cache tokens[:len(pages) * page_size] held in `pages`. Pages whose tokens were
        already cached in other pages are freed (the cached copy is kept); pages that are
        the cached ones (a request that started from a match) stay. Returns how many leading tokens
        were already cached. With the cache disabled every page is freed."""
        length = len(pages) * self.page_size
        if len(tokens) < length:
            raise ValueError(f"{len(pages)} pages need {length} tokens, got {len(tokens)}")
        if self.disable:
            self.free_pages(list(pages))
            return 0
        match = self.match_prefix(tokens[:length])
        matched_pages = match.tokens // self.page_size
        # A request that reused the cached pages hands the same ids back: keep those.
        duplicates = [p for p, c in zip(pages[:matched_pages], match.pages, strict=True)
                      if p != c]
        if duplicates:
            self.free_pages(duplicates)
        if match.tokens < length:
            node = RadixNode(key=tuple(tokens[match.tokens:length]),
                             pages=list(pages[matched_pages:]), parent=match.node)
            node.touch()
            match.node.children[self._page_key(node.key, 0)] = node
            self.cached_pages += len(node.pages)
            self._queue(node)
        return match.tokens

    # ---- locks --------------------------------------------------------------------------
    def lock(self, node: RadixNode) -> None:
        while node is not self.root and node is not None:  # None: dropped by reset()
            if node.lock_ref == 0:
                self.locked_pages += len(node.pages)
            node.lock_ref += 1
            node = node.parent  # type: ignore[assignment]

    def unlock(self, node: RadixNode) -> None:
        while node is not self.root and node is not None:  # None: dropped by reset()
            if node.lock_ref <= 0:
                raise ValueError("unlock of a node that is not locked")
            node.lock_ref -= 1
            if node.lock_ref == 0:
                self.locked_pages -= len(node.pages)
                if not node.children:
                    self._queue(node)
            node = node.parent  # type: ignore[assignment]

    # ---- eviction -----------------------------------------------------------------------
    def evict(self, pages_needed: int) -> int:
        """Free at least `pages_needed` pages from unlocked leaves, least recently used
        first (fewer if not enough are evictable). Returns the pages freed."""
        heap, freed = self._evictable, 0
        while freed < pages_needed and heap:
            queued_at, _, leaf = heap[0]
            parent = leaf.parent
            if parent is None or leaf.lock_ref or leaf.children:
                # evicted, locked or a parent since: queued again when it is a leaf again
                heapq.heappop(heap)
                leaf.queued = False
                continue
            if queued_at != leaf.last_access:  # used since: its place is its last use
                heapq.heapreplace(heap, (leaf.last_access, id(leaf), leaf))
                continue
            heapq.heappop(heap)
            leaf.queued = False
            del parent.children[self._page_key(leaf.key, 0)]
            leaf.parent = None
            self.free_pages(leaf.pages)
            freed += len(leaf.pages)
            self.cached_pages -= len(leaf.pages)
            if parent is not self.root and not parent.children and parent.lock_ref == 0:
                self._queue(parent)
        return freed

    def _queue(self, node: RadixNode) -> None:
        """Note that `node` (an unlocked leaf now) may be evicted: an entry at its last use.
        Its last use only grows, so one entry per node is enough (see `evict`)."""
        if not node.queued:
            node.queued = True
            heapq.heappush(self._evictable, (node.last_access, id(node), node))

    def reset(self) -> None:
        """Drop every cached entry (locked ones included) and free their pages."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            self.free_pages(node.pages)
            node.parent = None  # dropped: never evicted, and lock/unlock stop here
            stack.extend(node.children.values())
        self.root.children.clear()
        self._evictable.clear()
        self.cached_pages = self.locked_pages = 0
