"""Which persistent program runs which prefill tile (the sm_90a kernel's persistent launch).

Tiles are (work item, q head) pairs, item-major with heads fastest, in the plan's order
(longest key range first). Without a schedule the kernel deals them by itself in waves of
one tile per program, alternating direction from wave to wave. That is close to an even
split when a wave's tiles cost about the same (one long request), but ragged batches (4 x
2k: runs of equal items, cost stepping down per run) leave it about 3% over the best
split under the cost model below.

`longest_first` deals them on the host instead: wave by wave, the wave's tiles in the
plan's order (heaviest first) go to the programs with the least work so far. Each program
still gets one tile per wave, so tiles running side by side are the same as before (heads
of the same items, sharing K/V in L2). The kernel reads the result as a [waves, programs]
table of tile numbers, -1 where a program has none (the last wave).

Cost model: a tile costs its key blocks plus TILE_OVERHEAD blocks (its Q load and
epilogue); every program runs at the same speed. Windows are not counted (one plan serves
every layer); the sm_90a kernel runs windows only as wide as the table's
hopper_prefill_min_window, where the schedule is still a valid one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

TILE_OVERHEAD = 0.5  # key blocks' worth of a tile's fixed work
MIN_GAIN = 0.005  # the schedule is used where the model says it is this much shorter
# dealing costs the host about 20 us a wave (1.3 ms at this bound); past this many waves
# (about 33k query rows at 32 heads on 132 SMs, more than a chunked-prefill step) the plan
# does not deal, and the kernel's alternating waves run
MAX_WAVES = 64


@dataclass(frozen=True)
class TileSchedule:
    programs: int
    slots: list[int]  # [waves * programs] tile numbers, wave-major; -1: no tile
    makespan: float  # the busiest program's cost under the model
    alternating_makespan: float  # the same for the kernel's own alternating waves

    @property
    def waves(self) -> int:
        return len(self.slots) // self.programs


def tile_costs(key_ends: Sequence[int], block_n: int) -> list[float]:
    """Cost of each work item's tiles: key_ends[i] is the item's last visible key + 1."""
    return [-(-end // block_n) + TILE_OVERHEAD for end in key_ends]


def longest_first(item_costs: Sequence[float], heads: int, programs: int) -> TileSchedule:
    """Deal item-major tiles (`heads` per item, item_costs descending) to `programs`
    programs, one per program per wave, each wave's heaviest to the least loaded."""
    tiles = len(item_costs) * heads
    programs = _programs(tiles, programs)
    waves = waves_of(len(item_costs), heads, programs)
    loads = [0.0] * programs
    alternating = [0.0] * programs
    slots = [-1] * (waves * programs)
    for w in range(waves):
        base = w * programs
        costs = [item_costs[t // heads] for t in range(base, min(base + programs, tiles))]
        # stable: programs of equal load keep their order, so one long request (equal
        # costs) gets the kernel's own dealing
        order = sorted(range(programs), key=loads.__getitem__)
        for k, p, cost in zip(range(base, base + len(costs)), order, costs, strict=False):
            loads[p] += cost
            slots[base + p] = k
        if w % 2:  # the kernel's own dealing: reversed on odd waves
            costs.reverse()
            costs[:0] = [0.0] * (programs - len(costs))
        alternating = [a + c for a, c in zip(alternating, costs, strict=False)] + \
            alternating[len(costs):]
    return TileSchedule(programs, slots, max(loads, default=0.0),
                        max(alternating, default=0.0))


def _programs(tiles: int, programs: int) -> int:
    """Programs a launch of `tiles` tiles runs: at most one per tile, at least one."""
    return max(1, min(programs, tiles))


def waves_of(items: int, heads: int, programs: int) -> int:
    """Waves of a persistent launch over `items` work items (no dealing needed to know)."""
    tiles = items * heads
    return -(-tiles // _programs(tiles, programs))


def worth_it(schedule: TileSchedule) -> bool:
    """Whether the dealt schedule beats the kernel's alternating waves by MIN_GAIN."""
    return schedule.makespan < (1.0 - MIN_GAIN) * schedule.alternating_makespan
