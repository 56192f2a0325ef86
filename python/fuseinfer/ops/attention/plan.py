"""Plan/run for paged attention.

`plan_prefill` / `plan_decode` turn host-side lengths into device metadata (cumulative
query counts, work items, split buffers, launch sizes) with host-to-device copies only:
no device-to-host sync. They check what only the lengths can tell: kv_len >= q_len and a
page table long enough. One plan serves every layer of a step (windows, sinks and soft-cap
are arguments of `run`, so GPT-OSS's alternating layers share it).

CUDA graphs (decode): build the wrapper with `max_batch`, plan with a padded batch
(kv_len 0 rows give zeros) and a page-table view of a fixed buffer, capture `run`, then
before each replay call `plan_decode` again with the same batch size and that same page
table view: the lengths land in the same buffer, the split count depends only on the
batch size, and the kernels read every length on the device.

    attn = PagedAttention(AttentionShape(32, 8, 128, page_size=16), device="cuda")
    plan = attn.plan_decode(kv_lens=[900, 17], page_table=table)
    out = attn.run(plan, q, k_cache, v_cache)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..arg_checks import fail
from ..host_copy import to_device
from .arguments import DecodeLaunch, PrefillLaunch, default_scale
from .dispatch import HEAD_DIMS, AttentionDispatch, PrefillLaunchRule
from .tile_schedule import MAX_WAVES, longest_first, tile_costs, waves_of, worth_it

Lengths = Sequence[int] | torch.Tensor


@dataclass(frozen=True)
class AttentionShape:
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    page_size: int = 1
    # the cache holds float8 e4m3: decode launches with the table's FP8 rules
    kv_fp8: bool = False

    def validate(self) -> None:
        if self.head_dim not in HEAD_DIMS:
            fail("PagedAttention", "head_dim", f"{self.head_dim} is not supported "
                 f"(supported: {list(HEAD_DIMS)})")
        if self.num_kv_heads < 1 or self.num_q_heads % self.num_kv_heads:
            fail("PagedAttention", "num_kv_heads", f"({self.num_kv_heads}) must divide "
                 f"num_q_heads ({self.num_q_heads})")
        if self.page_size < 1:
            fail("PagedAttention", "page_size", f"must be >= 1, got {self.page_size}")

    @property
    def group(self) -> int:
        return self.num_q_heads // self.num_kv_heads


@dataclass(frozen=True)
class PrefillPlan:
    batch: int
    total_q: int
    page_table: torch.Tensor
    q_indptr: torch.Tensor
    kv_lens: torch.Tensor
    work: torch.Tensor  # (request, query block) per block_m queries of launch
    launch: PrefillLaunch
    q_lens_host: tuple[int, ...]
    kv_lens_host: tuple[int, ...]
    # where launch's sm_90a kernel does not run (layers narrower than the table's
    # hopper_prefill_min_window): the portable kernel's launch and work items (launch and
    # work themselves when no sm_90a kernel is planned or the table has no such bound;
    # work when the block_m is the same)
    portable_launch: PrefillLaunch
    portable_work: torch.Tensor
    # launch's persistent programs' tiles dealt on the host (tile_schedule.py): int32
    # [waves, programs], -1 where a program has none; None: the kernel's alternating waves
    schedule: torch.Tensor | None = None

    def work_for(self, launch: PrefillLaunch) -> torch.Tensor:
        """The work items of one of the plan's launches (they depend on its block_m)."""
        return self.work if launch.block_m == self.launch.block_m else self.portable_work

    def schedule_for(self, launch: PrefillLaunch) -> torch.Tensor | None:
        """The tile schedule of one of the plan's launches (only the sm_90a one has one)."""
        return self.schedule if launch == self.launch else None


@dataclass(frozen=True)
class DecodePlan:
    batch: int
    splits: int
    page_table: torch.Tensor
    kv_lens: torch.Tensor
    partial_out: torch.Tensor
    partial_lse: torch.Tensor
    launch: DecodeLaunch
    kv_lens_host: tuple[int, ...]
    merge_counters: torch.Tensor | None = None  # None: a merge kernel after the splits


def _host_lengths(values: Lengths, name: str) -> list[int]:
    if isinstance(values, torch.Tensor):
        if values.device.type != "cpu":
            fail("PagedAttention.plan", name, "must be host-side (a list or a CPU tensor): "
                 "reading device lengths would sync the device")
        return [int(v) for v in values.tolist()]
    return [int(v) for v in values]


def _to_device(values: list[int], device: torch.device, out: torch.Tensor | None = None
               ) -> torch.Tensor:
    """Host ints to an int32 device tensor (into `out` when given), without a sync."""
    return to_device(values, torch.int32, device, out)


def _prefill_launch(rule: PrefillLaunchRule, block_m: int, hopper: bool) -> PrefillLaunch:
    return PrefillLaunch(block_m, rule.block_n, rule.num_warps, rule.num_stages,
                         int(rule.tma), int(hopper), int(rule.pingpong), int(rule.persistent))


class PagedAttention:
    """Plans and runs paged prefill/extend and decode attention for one head layout."""

    def __init__(self, shape: AttentionShape, device: torch.device | str, *,
                 max_batch: int = 256, table: AttentionDispatch | None = None,
                 enable_pdl: bool | None = None, fused_merge: bool | None = None,
                 hopper_prefill: bool = True) -> None:
        shape.validate()
        self.shape = shape
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_batch = max_batch
        if table is None:
            from .dispatch import ATTENTION_BUILTIN, attention_table

            table = attention_table(self.device.index) if self.device.type == "cuda" \
                else ATTENTION_BUILTIN
        self.table = table
        self.enable_pdl = table.enable_pdl if enable_pdl is None else enable_pdl
        self.sm_count = torch.cuda.get_device_properties(self.device).multi_processor_count \
            if self.device.type == "cuda" else 1
        self._decode_kv_lens = torch.zeros(max_batch, dtype=torch.int32, device=self.device)
        self._partials: tuple[torch.Tensor, torch.Tensor] | None = None
        # decode's pieces merged by the last to finish: True on every layer, False never,
        # None where the table says (windowed layers of few pieces); else the merge kernel
        self.fused_merge = fused_merge
        # False: prefill on the portable kernel even where the table picks the sm_90a one
        self.hopper_prefill = hopper_prefill
        # counters per request row and head group (zero between calls); None: never fused
        may_fuse = fused_merge or (fused_merge is None and table.fused_merge_window_pieces > 0)
        self._merge_counters = torch.zeros(max_batch, shape.num_q_heads, dtype=torch.int32,
                                           device=self.device) if may_fuse else None

    # ---- decode -------------------------------------------------------------------------
    def fuses_merge(self, window_left: int | None, block_n: int) -> bool:
        """Whether a decode call with this window merges its pieces in the last one."""
        if self._merge_counters is None:
            return False
        return self.fused_merge if self.fused_merge is not None \
            else self.table.fuses_merge(window_left, block_n)

    def kv_heads_per_program(self, batch: int | None = None) -> int:
        """KV heads one decode program reads at this batch size: the rule's count on
        tensor cores where it divides the KV heads, else 1."""
        s = self.shape
        n = self.table.decode_rule(s.head_dim, s.kv_fp8, batch).kv_heads_per_program
        use_dot = s.group >= self.table.tensor_core_min_group
        return n if use_dot and s.num_kv_heads % n == 0 else 1

    def decode_units(self, batch: int | None = None) -> int:
        """Programs per request and split: KV groups on tensor cores (several per program
        where the rule says so), else q heads."""
        s = self.shape
        return s.num_kv_heads // self.kv_heads_per_program(batch) \
            if s.group >= self.table.tensor_core_min_group else s.num_q_heads

    def splits_for(self, batch: int) -> int:
        """Split count for a batch size: enough programs for every SM (the batch's rule's
        ctas_per_sm, else the entry's target_ctas_per_sm; lengths not used)."""
        s = self.shape
        per_sm = self.table.decode_rule(s.head_dim, s.kv_fp8, batch).ctas_per_sm \
            or self.table.target_ctas_per_sm
        target = self.sm_count * per_sm
        splits = -(-target // max(batch * self.decode_units(batch), 1))
        return max(1, min(self.table.max_splits, splits))

    def _partial_buffers(self, batch: int, splits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Views of one buffer pair sized at first use for every batch <= max_batch at the
        table's split counts, so graph captures keep their addresses. A larger override
        (tests) reallocates."""
        s = self.shape
        rows = batch * splits
        if self._partials is None or self._partials[1].numel() < rows * s.num_q_heads:
            rows = max(rows, max(b * self.splits_for(b) for b in range(1, self.max_batch + 1)))
            self._partials = (
                torch.empty(rows * s.num_q_heads * s.head_dim, dtype=torch.float32,
                            device=self.device),
                torch.empty(rows * s.num_q_heads, dtype=torch.float32, device=self.device))
        flat_out, flat_lse = self._partials
        n = batch * splits * s.num_q_heads
        return (flat_out[: n * s.head_dim].view(batch, s.num_q_heads, splits, s.head_dim),
                flat_lse[:n].view(batch, s.num_q_heads, splits))

    def plan_decode(self, kv_lens: Lengths, page_table: torch.Tensor,
                    splits: int | None = None) -> DecodePlan:
        """Plan one decode step; `splits` overrides the table's split count (tests)."""
        lens = _host_lengths(kv_lens, "kv_lens")
        batch = len(lens)
        op = "PagedAttention.plan_decode"
        if batch > self.max_batch:
            fail(op, "kv_lens", f"has {batch} requests, more than max_batch={self.max_batch}")
        if any(n < 0 for n in lens):
            fail(op, "kv_lens", "must be >= 0 (0: a padded row)")
        self._check_table(page_table, lens, "plan_decode")
        splits = self.splits_for(batch) if splits is None else splits
        if splits < 1:
            fail(op, "splits", f"must be >= 1, got {splits}")
        partial_out, partial_lse = self._partial_buffers(batch, splits)
        rule = self.table.decode_rule(self.shape.head_dim, self.shape.kv_fp8, batch)
        return DecodePlan(
            batch=batch, splits=splits, page_table=page_table,
            kv_lens=_to_device(lens, self.device, self._decode_kv_lens[:batch]),
            partial_out=partial_out, partial_lse=partial_lse,
            launch=DecodeLaunch(rule.block_n, rule.num_warps, rule.num_stages,
                                self.table.min_chunk, self.table.tensor_core_min_group,
                                self.kv_heads_per_program(batch),
                                int(rule.kernel == "cuda")),
            kv_lens_host=tuple(lens), merge_counters=self._merge_counters)

    # ---- prefill ------------------------------------------------------------------------
    def plan_prefill(self, q_lens: Lengths, kv_lens: Lengths, page_table: torch.Tensor,
                     block_m: int | None = None) -> PrefillPlan:
        """Plan a ragged prefill/extend step. kv_lens count each request's cached tokens
        including its new ones (already written to the cache)."""
        ql = _host_lengths(q_lens, "q_lens")
        kl = _host_lengths(kv_lens, "kv_lens")
        op = "PagedAttention.plan_prefill"
        if len(ql) != len(kl):
            fail(op, "q_lens", f"has {len(ql)} requests but kv_lens has {len(kl)}")
        for b, (q_len, kv_len) in enumerate(zip(ql, kl, strict=True)):
            if q_len < 0 or kv_len < q_len:
                fail(op, "kv_lens", f"request {b}: kv_len {kv_len} must be >= q_len {q_len} "
                     ">= 0 (the new tokens are in the cache)")
        self._check_table(page_table, kl, "plan_prefill")
        rule = self.table.prefill_rule(self.shape.head_dim)
        # the sm_90a kernel takes 16-bit caches only
        hopper = rule.kernel == "hopper" and self.hopper_prefill and not self.shape.kv_fp8
        portable = self.table.portable_prefill_rule(self.shape.head_dim)
        if not hopper:
            rule = portable
        bm = rule.block_m if block_m is None else block_m
        launch = _prefill_launch(rule, bm, hopper)
        work, key_ends = self._prefill_work(ql, kl, bm)
        schedule = self._tile_schedule(key_ends, launch) \
            if hopper and rule.persistent and rule.longest_first else None
        # the portable kernel's launch, for layers narrower than hopper_prefill_min_window
        # (none when it is 0: no second list)
        portable_launch = _prefill_launch(portable, portable.block_m, False) \
            if hopper and self.table.hopper_prefill_min_window > 0 else launch
        portable_work = work if portable_launch.block_m == bm \
            else self._prefill_work(ql, kl, portable_launch.block_m)[0]
        indptr = [0]
        for q_len in ql:
            indptr.append(indptr[-1] + q_len)
        return PrefillPlan(
            batch=len(ql), total_q=indptr[-1], page_table=page_table,
            q_indptr=_to_device(indptr, self.device), kv_lens=_to_device(kl, self.device),
            work=work, launch=launch, q_lens_host=tuple(ql), kv_lens_host=tuple(kl),
            portable_launch=portable_launch, portable_work=portable_work, schedule=schedule)

    def _prefill_work(self, ql: list[int], kl: list[int], bm: int
                      ) -> tuple[torch.Tensor, list[int]]:
        """(request, query block) per bm queries, longest rows first (the tail of the grid,
        or each persistent program's last tiles, is short), and each item's key end (its
        last visible key + 1)."""
        items: list[tuple[int, int, int]] = []  # (key end, request, block)
        for b, (q_len, kv_len) in enumerate(zip(ql, kl, strict=True)):
            prefix = kv_len - q_len
            for blk in range(-(-q_len // bm)):
                items.append((prefix + min((blk + 1) * bm, q_len), b, blk))
        items.sort(key=lambda t: -t[0])
        flat = [v for _, b, blk in items for v in (b, blk)]
        work = _to_device(flat, self.device).view(-1, 2) if flat else \
            torch.zeros(0, 2, dtype=torch.int32, device=self.device)
        return work, [end for end, _, _ in items]

    def _tile_schedule(self, key_ends: list[int], launch: PrefillLaunch
                       ) -> torch.Tensor | None:
        """The persistent launch's tiles dealt longest-first, where the cost model says
        that beats the kernel's alternating waves (tile_schedule.py)."""
        if not key_ends or waves_of(len(key_ends), self.shape.num_q_heads,
                                    self.sm_count) > MAX_WAVES:
            return None
        dealt = longest_first(tile_costs(key_ends, launch.block_n), self.shape.num_q_heads,
                              self.sm_count)
        if not worth_it(dealt):
            return None
        return _to_device(dealt.slots, self.device).view(dealt.waves, dealt.programs)

    def prefill_launch(self, plan: PrefillPlan, window_left: int | None) -> PrefillLaunch:
        """The plan's launch for a layer with this window: layers narrower than the table's
        hopper_prefill_min_window leave the sm_90a kernel to the portable one (its work
        items: plan.work_for)."""
        if plan.launch.hopper_kernel and window_left is not None \
                and window_left < self.table.hopper_prefill_min_window:
            return plan.portable_launch
        return plan.launch

    def _check_table(self, page_table: torch.Tensor, kv_lens: list[int], where: str) -> None:
        op = f"PagedAttention.{where}"
        if page_table.dim() != 2 or page_table.dtype != torch.int32:
            fail(op, "page_table", f"must be int32 [batch, pages], got {page_table.dtype} "
                 f"{list(page_table.shape)}")
        if page_table.size(0) < len(kv_lens):
            fail(op, "page_table", f"has {page_table.size(0)} rows for {len(kv_lens)} "
                 "requests")
        capacity = page_table.size(1) * self.shape.page_size
        longest = max(kv_lens, default=0)
        if longest > capacity:
            fail(op, "page_table", f"is too short: {page_table.size(1)} pages x page_size "
                 f"{self.shape.page_size} = {capacity} tokens, but a request has {longest}")

    # ---- run ----------------------------------------------------------------------------
    def run(self, plan: PrefillPlan | DecodePlan, q: torch.Tensor, k_cache: torch.Tensor,
            v_cache: torch.Tensor, *, out: torch.Tensor | None = None,
            return_lse: bool = False, sinks: torch.Tensor | None = None,
            window_left: int | None = None, logit_cap: float = 0.0,
            sm_scale: float | None = None, k_scale: torch.Tensor | None = None,
            v_scale: torch.Tensor | None = None
            ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attention for a planned step: q [tokens, q_heads, head_dim] (decode: tokens =
        batch). Returns out (and lse [tokens, q_heads] when return_lse)."""
        op = "PagedAttention.run"
        expected = plan.total_q if isinstance(plan, PrefillPlan) else plan.batch
        if q.dim() != 3 or q.size(0) != expected or q.size(1) != self.shape.num_q_heads:
            fail(op, "q", f"must be [{expected}, {self.shape.num_q_heads}, head_dim] for "
                 f"this plan, got {list(q.shape)}")
        page_size = k_cache.size(1) if k_cache.dim() == 4 else 1
        if page_size != self.shape.page_size:
            fail(op, "k_cache", f"has page size {page_size}, the plan expects "
                 f"{self.shape.page_size}")
        out = torch.empty_like(q) if out is None else out
        lse = torch.empty(q.size(0), q.size(1), dtype=torch.float32, device=q.device) \
            if return_lse else None
        scale = default_scale(q.size(-1)) if sm_scale is None else sm_scale
        common = dict(lse=lse, sinks=sinks, k_scale=k_scale, v_scale=v_scale, sm_scale=scale,
                      window_left=window_left, logit_cap=logit_cap,
                      enable_pdl=self.enable_pdl)
        if isinstance(plan, PrefillPlan):
            launch = self.prefill_launch(plan, window_left)
            torch.ops.fuseinfer.paged_prefill_attention(
                q, k_cache, v_cache, plan.page_table, plan.q_indptr, plan.kv_lens,
                plan.work_for(launch), out, launch=list(launch),
                schedule=plan.schedule_for(launch), **common)
        else:
            torch.ops.fuseinfer.paged_decode_attention(
                q, k_cache, v_cache, plan.page_table, plan.kv_lens, plan.partial_out,
                plan.partial_lse, out, merge_counters=plan.merge_counters
                if self.fuses_merge(window_left, plan.launch.block_n) else None,
                launch=list(plan.launch), **common)
        return (out, lse) if return_lse else out


__all__ = ["AttentionShape", "PagedAttention"]
