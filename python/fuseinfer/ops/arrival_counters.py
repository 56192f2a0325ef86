"""Arrival counters: per-stream rows of int32 counters, zero between calls, for kernels
whose programs count themselves in and let the last to arrive finish the work (split_k's
K slices, greedy_sample's vocabulary chunks). The last program sets its counter back to
zero, so a row is reused by every call and graph replay without a memset launch.

One row per (device, stream), so calls on two streams never share a counter. Rows are
allocated outside any CUDA-graph capture (a buffer first made inside one would be zeroed
only by that graph's replays); a stream first seen while capturing takes one of the spare
rows kept ready, which the next call outside capture replenishes. Streams come from
torch's fixed pools, so the rows stay few.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

_SPARE_ROWS = 2  # rows kept ready for streams first seen while capturing


@dataclass
class ArrivalCounters:
    """One kernel family's counter rows of `size` int32 each; `owner` names it in errors."""

    owner: str
    size: int
    _rows: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    _spares: dict[int, list[torch.Tensor]] = field(default_factory=dict)

    def _zeroed_row(self, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.size, dtype=torch.int32, device=device)

    def row(self, device: torch.device) -> torch.Tensor:
        """The current stream's row (all zero between calls)."""
        index = device.index if device.index is not None else torch.cuda.current_device()
        key = (index, torch.cuda.current_stream(device).stream_id)
        capturing = torch.cuda.is_current_stream_capturing()
        spares = self._spares.setdefault(index, [])
        while not capturing and len(spares) < _SPARE_ROWS:  # a call outside capture refills
            spares.append(self._zeroed_row(device))
        row = self._rows.get(key)
        if row is not None:
            return row
        if not capturing:
            row = self._zeroed_row(device)
        elif spares:
            row = spares.pop()
        else:
            raise RuntimeError(
                f"{self.owner}: a call on a new stream inside CUDA-graph capture and no "
                "spare counters left; call reserve_counters(device) (or the op once) "
                "outside capture first")
        self._rows[key] = row
        return row

    def reserve(self, device: torch.device) -> None:
        """Allocate this GPU's rows now (outside capture), for a caller whose first call
        would be inside a CUDA-graph capture (the op raises there otherwise)."""
        if device.type == "cuda" and not torch.cuda.is_current_stream_capturing():
            self.row(device)
