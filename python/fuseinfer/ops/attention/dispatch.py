"""Dispatch-table entry of the attention family (Triton kernels).

Decode (split-KV): each request's visible KV range is cut into at most `max_splits`
pieces of at least `min_chunk` tokens; the number of pieces is decided on the device from
the request's length, so one plan (and one CUDA graph) serves any lengths. The plan sets
max_splits from the batch: enough (batch x kv_heads x splits) programs to give every SM
`target_ctas_per_sm` (or the decode rule's own `ctas_per_sm`: kernels differ in how many
programs an SM holds at once). KV groups of at least `tensor_core_min_group` q heads run together
through tensor-core dots; smaller groups run one q head per program on the FMA units.
Decode from an FP8 cache takes `fp8_decode_rules` where the entry has them. The last
piece to finish merges the pieces (no merge kernel) on layers whose window bounds every
request to at most `fused_merge_window_pieces` pieces.
Prefill: blocks of block_m queries x block_n keys; with `tma`, a key/value tile that lies
inside one page (page_size a multiple of block_n) comes in one bulk tensor copy. Rules
are picked by head_dim; a rule's `kernel` picks the portable kernel or the sm_90a one.
Where the plan leaves a hopper rule's kernel out (a window narrower than
hopper_prefill_min_window, an FP8 cache, PagedAttention(hopper_prefill=False)), the head
dim's next rule of the portable kernel runs the call (the hopper rule itself when there is
none and its tiles are the portable kernel's too: block_m 128, not 192). A call the kernel
declines when it runs (another GPU, an unaligned q, a Triton that cannot build it) runs
the portable kernel over the hopper rule's own tiles (64-row pieces of 192-row ones).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...dispatch import TableError, register_op
from ...dispatch.rule_checks import check_pow2
from .prefill_hopper import SMEM_BYTES, consumer_warps, hopper_rule_problem, smem_bytes

HEAD_DIMS = (64, 128, 256)
DECODE_KERNELS = ("triton", "cuda")
PREFILL_KERNELS = ("triton", "hopper")


def _check_loop(block_n: int, num_warps: int, num_stages: int, where: str) -> None:
    """The fields every rule has: key block, warps, pipeline stages."""
    check_pow2(block_n, 16, 256, f"{where}.block_n")
    check_pow2(num_warps, 1, 16, f"{where}.num_warps")
    if not 1 <= num_stages <= 6:
        raise TableError(f"{where}.num_stages: must be in [1, 6], got {num_stages}")


@dataclass(frozen=True)
class DecodeLaunchRule:
    max_head_dim: int | None
    block_n: int
    num_warps: int
    num_stages: int
    # tensor-core path: KV heads one program reads side by side (a token's rows of
    # neighbouring heads are contiguous in the cache, so each read is that much longer)
    kv_heads_per_program: int = 1
    # "triton", or "cuda": csrc/attention's kernel (each warp's num_stages - 1 chunks of 16
    # keys in flight through a cp.async ring, K, V and P in registers; KV groups of at most
    # 16, head_dim 64 or 128, 4 or 8 warps, 2-4 stages, one KV head per program; block_n
    # then only aligns the split ranges). Elsewhere Triton runs.
    kernel: str = "triton"
    # the rule serves batches up to this many requests (None: any); rules are read in
    # order, so a small-batch rule goes before its head dim's catch-all
    max_batch: int | None = None
    # programs per SM the split count aims at for the batches this rule serves (None: the
    # entry's target_ctas_per_sm); e.g. a kernel of which an SM holds two at once
    ctas_per_sm: int | None = None

    def validate(self, where: str) -> None:
        _check_loop(self.block_n, self.num_warps, self.num_stages, where)
        if self.max_batch is not None and self.max_batch < 1:
            raise TableError(f"{where}.max_batch: must be >= 1 or null, got {self.max_batch}")
        if self.ctas_per_sm is not None and not 1 <= self.ctas_per_sm <= 32:
            raise TableError(f"{where}.ctas_per_sm: must be in [1, 32] or null, got "
                             f"{self.ctas_per_sm}")
        check_pow2(self.kv_heads_per_program, 1, 8, f"{where}.kv_heads_per_program")
        if self.kernel not in DECODE_KERNELS:
            raise TableError(f"{where}.kernel: must be one of {list(DECODE_KERNELS)}, got "
                             f"{self.kernel!r}")
        if self.kernel == "cuda" and (self.num_warps not in (4, 8)
                                      or self.num_stages not in (2, 3, 4)
                                      or self.kv_heads_per_program != 1):
            raise TableError(f"{where}: the cuda kernel runs 4 or 8 warps, 2-4 stages and one "
                             f"KV head per program, got {self.num_warps}, {self.num_stages} "
                             f"and {self.kv_heads_per_program}")


@dataclass(frozen=True)
class PrefillLaunchRule:
    max_head_dim: int | None
    block_m: int
    block_n: int
    num_warps: int
    num_stages: int
    tma: bool  # bulk-copy key/value tiles when a tile lies in one page (sm_90+)
    # "triton" (the portable kernel) or "hopper": triton/attention_prefill_hopper.py, the
    # warp-specialized sm_90a kernel (block_m 128 over 8 warps, or at head_dim 64 192 over
    # 12: a consumer warpgroup per 64 rows; num_stages K/V tiles in flight). It runs where
    # its conditions hold (ops/attention/prefill_hopper.py: sm_90, a 16-bit cache, head_dim
    # 64 or 128); elsewhere the portable kernel runs (the module docstring: which rule).
    kernel: str = "triton"
    # the hopper kernel: its consumer warpgroups (two or three) take turns issuing their
    # MMAs, in a ring, so one's softmax runs while the tensor cores work through the others'
    pingpong: bool = False
    # the hopper kernel: one program per SM running tile after tile (a tile's epilogue
    # overlaps the next tile's loads) instead of one program per tile
    persistent: bool = False
    # persistent: the plan deals the tiles to the programs longest-first (tile_schedule.py)
    # where its cost model says that beats the kernel's own alternating waves
    longest_first: bool = False

    def validate(self, where: str) -> None:
        if self.kernel not in PREFILL_KERNELS:
            raise TableError(f"{where}.kernel: must be one of {list(PREFILL_KERNELS)}, got "
                             f"{self.kernel!r}")
        for name in ("pingpong", "persistent", "longest_first"):
            if getattr(self, name) and self.kernel != "hopper":
                raise TableError(f"{where}.{name}: only with kernel 'hopper', got "
                                 f"{self.kernel!r}")
        if self.longest_first and not self.persistent:
            raise TableError(f"{where}.longest_first: only with persistent programs")
        if self.kernel == "hopper":  # its own tiles, warps and stages
            problem = hopper_rule_problem(self)
            if problem:
                raise TableError(f"{where}: {problem}")
            return
        check_pow2(self.block_m, 16, 256, f"{where}.block_m")
        _check_loop(self.block_n, self.num_warps, self.num_stages, where)

    @property
    def portable_tiles(self) -> bool:
        """Whether the portable kernel can run this rule's tiles (block_m a power of two:
        a 128-row hopper rule's are, a 192-row one's are not)."""
        return self.block_m & (self.block_m - 1) == 0


def hopper_rule_for(head_dim: int) -> PrefillLaunchRule:
    """A rule picking the sm_90a prefill kernel at the head dim: 128-query, 128-key tiles,
    as many in flight (up to 4) as its shared memory holds. What `bench attention
    --hopper-prefill` times where the table does not pick the kernel."""
    stages = max(s for s in (2, 3, 4) if smem_bytes(head_dim, 128, s) <= SMEM_BYTES)
    return PrefillLaunchRule(head_dim, 128, 128, consumer_warps(128), stages, True, "hopper")


def _check_rules(rules: tuple, where: str) -> None:
    if not rules:
        raise TableError(f"{where}: needs at least one rule")
    if rules[-1].max_head_dim is not None or getattr(rules[-1], "max_batch", None) is not None:
        raise TableError(f"{where}: the last rule must have max_head_dim null and no max_batch")


@dataclass(frozen=True)
class AttentionDispatch:
    source: str
    enable_pdl: bool
    tensor_core_min_group: int
    target_ctas_per_sm: int
    min_chunk: int
    max_splits: int
    decode_rules: tuple[DecodeLaunchRule, ...]
    prefill_rules: tuple[PrefillLaunchRule, ...]
    # decode from an FP8 cache (half the bytes per key: other blocks can win); empty:
    # decode_rules
    fp8_decode_rules: tuple[DecodeLaunchRule, ...] = ()
    # decode's pieces merged by the last piece to finish (no merge kernel) on layers whose
    # window bounds every request to at most this many pieces; 0: never. It pays where the
    # launch it saves is a large share of a short kernel: on the H200 (2026-12-02) 1.09-1.23x
    # on GPT-OSS's 128-token window, but 0.28-0.54x at 64 pieces (one program per KV group
    # merges what the merge kernel spreads over every q head) and 0.88-1.00x on full-length
    # layers even at 2-3 pieces
    fused_merge_window_pieces: int = 0
    # prefill rules whose kernel is "hopper" leave sliding layers narrower than this many
    # keys to the portable kernel: a query block there reads only a few key blocks, and
    # the portable kernel's shorter start wins (H200, window 128: 1.38x)
    hopper_prefill_min_window: int = 0

    def validate(self, where: str) -> None:
        if not 0 <= self.fused_merge_window_pieces <= 256:
            raise TableError(f"{where}.fused_merge_window_pieces: must be in [0, 256], got "
                             f"{self.fused_merge_window_pieces}")
        if self.tensor_core_min_group < 1:
            raise TableError(f"{where}.tensor_core_min_group: must be >= 1")
        if self.target_ctas_per_sm < 1 or not 1 <= self.max_splits <= 256:
            raise TableError(f"{where}: target_ctas_per_sm must be >= 1 and max_splits in "
                             "[1, 256]")
        if self.min_chunk < 16:
            raise TableError(f"{where}.min_chunk: must be >= 16, got {self.min_chunk}")
        _check_rules(self.decode_rules, f"{where}.decode_rules")
        _check_rules(self.prefill_rules, f"{where}.prefill_rules")
        if self.fp8_decode_rules:
            _check_rules(self.fp8_decode_rules, f"{where}.fp8_decode_rules")

    def decode_rule(self, head_dim: int, fp8: bool = False, batch: int | None = None
                    ) -> DecodeLaunchRule:
        """The first decode rule that holds the head dim and the batch (None: a batch of any
        size, so only rules without max_batch); fp8: for an FP8 cache (its own rules if
        the entry has them)."""
        rules = self.fp8_decode_rules if fp8 and self.fp8_decode_rules else self.decode_rules
        return next(r for r in rules
                    if (r.max_head_dim is None or head_dim <= r.max_head_dim)
                    and (r.max_batch is None or (batch is not None and batch <= r.max_batch)))

    def fuses_merge(self, window_left: int | None, block_n: int) -> bool:
        """Whether decode on a layer with this window (None: full length) merges its pieces
        in the last one: a request sees at most window_left + block_n keys (its range
        starts at a block), so at most that over min_chunk pieces."""
        if window_left is None or self.fused_merge_window_pieces < 1:
            return False
        pieces = -(-(window_left + block_n) // self.min_chunk)
        return pieces <= self.fused_merge_window_pieces

    def prefill_rule(self, head_dim: int) -> PrefillLaunchRule:
        return next(r for r in self.prefill_rules
                    if r.max_head_dim is None or head_dim <= r.max_head_dim)

    def portable_prefill_rule(self, head_dim: int) -> PrefillLaunchRule:
        """The rule the portable kernel runs at the head dim where prefill_rule's sm_90a
        kernel does not: the first of the portable kernel that holds the head dim, else the
        first whose tiles it can run (block_m a power of two: the last rule holds every
        head dim, and a 192-row rule, head_dim 64 only, cannot be last)."""
        held = [r for r in self.prefill_rules
                if r.max_head_dim is None or head_dim <= r.max_head_dim]
        rule = next((r for r in held if r.kernel == "triton"), None) \
            or next((r for r in held if r.portable_tiles), None)
        if rule is None:  # only an unvalidated table (built in code) gets here
            raise TableError(f"attention.prefill_rules: no rule the portable kernel can run "
                             f"holds head_dim {head_dim} (a 192-row sm_90a rule needs a "
                             f"portable rule after it)")
        return rule


# Defaults for GPUs without a tuned entry: the H100's tuned choices (2026-11-22), which
# only need sm_80+ Triton features (the TMA path falls back on older GPUs).
ATTENTION_BUILTIN = AttentionDispatch(
    source="built-in default",
    enable_pdl=True,
    tensor_core_min_group=2,
    target_ctas_per_sm=4,
    min_chunk=64,
    max_splits=64,
    decode_rules=(DecodeLaunchRule(None, 64, 4, 2),),
    prefill_rules=(
        PrefillLaunchRule(64, 64, 64, 4, 2, True),
        PrefillLaunchRule(128, 128, 64, 4, 2, True),
        PrefillLaunchRule(None, 64, 32, 4, 2, True),
    ),
)

register_op("attention", AttentionDispatch, ATTENTION_BUILTIN)


def attention_table(device_index: int | None = None) -> AttentionDispatch:
    """The effective attention entry for a GPU (model table -> family -> built-in)."""
    from ...dispatch import current_identity, lookup

    return lookup("attention", current_identity(device_index)).entry
