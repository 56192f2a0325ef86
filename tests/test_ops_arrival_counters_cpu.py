"""ArrivalCounters (split_k's and greedy_sample's counter rows): one row per stream; streams
first seen inside a CUDA-graph capture take spare rows, which any later call outside
capture refills (reserve, as the error advises), so captures on new streams keep working;
with none left inside a capture, a clear error. Pools of two ops never share a row."""

from __future__ import annotations

import types

import pytest
import torch

import fuseinfer.ops.arrival_counters as ac


def test_counter_rows_per_stream_refill_their_spares(monkeypatch):
    state = {"stream": 0, "capturing": False}
    monkeypatch.setattr(torch.cuda, "current_stream",
                        lambda device=None: types.SimpleNamespace(stream_id=state["stream"]))
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: state["capturing"])
    monkeypatch.setattr(ac.ArrivalCounters, "_zeroed_row",
                        lambda self, device: torch.zeros(self.size, dtype=torch.int32))
    pool = ac.ArrivalCounters("test op", 4)
    other = ac.ArrivalCounters("other op", 4)
    dev = torch.device("cuda", 0)
    pool.reserve(dev)
    rows = {pool.row(dev).data_ptr()}
    assert pool.row(dev).data_ptr() in rows and pool.row(dev).shape == (4,)
    assert other.row(dev).data_ptr() not in rows  # another op's pool: its own row
    for round_ in range(3):  # two new capture streams per round, then a refill outside
        for stream in (100 + 2 * round_, 101 + 2 * round_):
            state.update(stream=stream, capturing=True)
            rows.add(pool.row(dev).data_ptr())
        state.update(stream=0, capturing=False)
        pool.reserve(dev)
        assert len(pool._spares[0]) == ac._SPARE_ROWS
    assert len(rows) == 7  # every stream its own row
    state.update(stream=100, capturing=True)  # a known stream inside capture: its row
    assert pool.row(dev).data_ptr() in rows
    for stream in (200, 201):
        state.update(stream=stream)
        pool.row(dev)
    state.update(stream=202)
    with pytest.raises(RuntimeError, match="test op: .*no spare counters left"):
        pool.row(dev)
    pool.reserve(torch.device("cpu"))  # nothing to reserve off the GPU
