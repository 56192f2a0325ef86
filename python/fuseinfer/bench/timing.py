"""Timing of GPU work: CUDA-graph replay of many calls, rotating input sets.

Small kernels timed one launch at a time measure launch overhead, so many calls are
captured into one graph and the replay is timed with events. Inputs that fit in L2 make
repeated calls measure the cache, so callers pass one closure per buffer set and the
calls cycle through them (`rotation_count` says how many sets).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

_DEFAULT_L2_BYTES = 50 * 2**20


@dataclass(frozen=True)
class TimingConfig:
    """How to time: repeats, warm-up and how much GPU time one graph replay holds."""

    repeats: int = 20
    warmup_calls: int = 3
    target_graph_ms: float = 3.0
    max_calls_per_graph: int = 2000
    use_cuda_graph: bool = True


@dataclass(frozen=True)
class TimingResult:
    """Per-call times in microseconds over `repeats` timed replays (or loops)."""

    median_us: float
    min_us: float
    p20_us: float
    p80_us: float
    calls_per_replay: int
    repeats: int
    method: str  # "cuda_graph", "events" or "cpu"


def rotation_count(set_bytes: int, l2_bytes: int, max_sets: int = 64) -> int:
    """Number of input sets to rotate so that together they exceed twice the L2 size."""
    if set_bytes <= 0:
        raise ValueError(f"set_bytes must be positive, got {set_bytes}")
    if max_sets < 1:
        raise ValueError(f"max_sets must be at least 1, got {max_sets}")
    needed = (2 * l2_bytes) // set_bytes + 1  # smallest n with n * set_bytes > 2 * L2
    return max(1, min(needed, max_sets))


def buffer_sets(set_bytes: int, l2_bytes: int, cold: bool = False) -> int:
    """Input sets a benchmark rotates through. A call whose data fits in a quarter of L2
    runs on one set, warm in L2, as a decode step finds the activations the previous
    kernel just wrote; a larger one (or any, with cold=True) rotates past L2."""
    if not cold and 4 * set_bytes <= l2_bytes:
        return 1
    return rotation_count(set_bytes, l2_bytes)


def l2_cache_bytes(device: Any = None) -> int:
    """L2 size of the device in bytes; 50 MiB where it cannot be read."""
    try:
        import torch

        if not torch.cuda.is_available():
            return _DEFAULT_L2_BYTES
        index = torch.cuda.current_device() if device is None else device
        size = int(getattr(torch.cuda.get_device_properties(index), "L2_cache_size", 0))
    except Exception:
        return _DEFAULT_L2_BYTES
    return size if size > 0 else _DEFAULT_L2_BYTES


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (q in [0, 1]) of already sorted values."""
    if not sorted_values:
        raise ValueError("no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summarize(per_call_us: Sequence[float], calls_per_replay: int, method: str) -> TimingResult:
    """Reduce per-call times of each repeat to median, min, p20 and p80."""
    values = sorted(per_call_us)
    return TimingResult(
        median_us=statistics.median(values),
        min_us=values[0],
        p20_us=_percentile(values, 0.2),
        p80_us=_percentile(values, 0.8),
        calls_per_replay=calls_per_replay,
        repeats=len(values),
        method=method,
    )


def calls_per_replay(estimate_ms: float, n_sets: int, config: TimingConfig) -> int:
    """Calls one replay holds: about target_graph_ms of work, a whole number of rotations."""
    if n_sets < 1:
        raise ValueError("need at least one call")
    wanted = math.ceil(config.target_graph_ms / max(estimate_ms, 1e-6))
    n = max(n_sets, min(wanted, config.max_calls_per_graph))
    n = math.ceil(n / n_sets) * n_sets
    # Rounding up may pass the cap; step back one rotation when that still leaves one.
    if n > config.max_calls_per_graph and n - n_sets >= n_sets:
        n -= n_sets
    return n


def _run_cyclic(calls: Sequence[Callable[[], object]], count: int) -> None:
    for i in range(count):
        calls[i % len(calls)]()


def _time_repeats(torch: Any, launch: Callable[[], None], repeats: int) -> list[float]:
    """Elapsed ms of `launch` per repeat; events only, one sync after the last."""
    stream = torch.cuda.current_stream()
    pairs = []
    for _ in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record(stream)
        launch()
        end.record(stream)
        pairs.append((start, end))
    torch.cuda.synchronize()
    return [start.elapsed_time(end) for start, end in pairs]


def _capture(torch: Any, calls: Sequence[Callable[[], object]], count: int) -> Any:
    """Capture `count` cyclic calls into one graph; None if the work is not capturable."""
    # Warm up on a side stream first (lazy handles and workspaces must not be created
    # inside the capture), as the torch CUDA-graph notes recommend.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        _run_cyclic(calls, len(calls))
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            _run_cyclic(calls, count)
    except Exception:
        del graph
        torch.cuda.synchronize()
        return None
    return graph


def time_calls(
    calls: Sequence[Callable[[], object]], config: TimingConfig | None = None
) -> TimingResult:
    """Time one call of the work; `calls` holds one closure per rotated buffer set.

    Each closure launches the work once on the current stream. Uses CUDA-graph replay of
    many calls when capturable, else the same number of eager calls between events.
    """
    import torch

    config = config or TimingConfig()
    if not calls:
        raise ValueError("time_calls needs at least one closure")
    if config.repeats < 1:
        raise ValueError("repeats must be at least 1")
    # Warm-up compiles (JIT, torch.compile, Triton) and allocates before any timing.
    for _ in range(config.warmup_calls):
        _run_cyclic(calls, len(calls))
    torch.cuda.synchronize()

    n_estimate = len(calls) * max(1, math.ceil(10 / len(calls)))
    estimate_ms = _time_repeats(torch, lambda: _run_cyclic(calls, n_estimate), 1)[0] / n_estimate
    count = calls_per_replay(estimate_ms, len(calls), config)

    graph = _capture(torch, calls, count) if config.use_cuda_graph else None
    if graph is not None:
        graph.replay()  # first replay uploads the graph; keep it out of the numbers
        torch.cuda.synchronize()
        elapsed_ms = _time_repeats(torch, graph.replay, config.repeats)
        method = "cuda_graph"
        graph.reset()
        del graph
    else:
        elapsed_ms = _time_repeats(torch, lambda: _run_cyclic(calls, count), config.repeats)
        method = "events"
    return summarize([ms * 1e3 / count for ms in elapsed_ms], count, method)


def time_eager_cpu(fn: Callable[[], object], repeats: int = 10) -> TimingResult:
    """Host-clock timing of single calls, for the CPU smoke path."""
    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    fn()  # warm-up: first-call costs (imports, caches) are not the steady state
    per_call_us = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        per_call_us.append((time.perf_counter() - start) * 1e6)
    return summarize(per_call_us, 1, "cpu")
