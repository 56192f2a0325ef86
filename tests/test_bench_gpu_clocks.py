"""bench/gpu_clocks.py: an NVML clocks-event mask decoded by name, and the reading's
fallbacks (no GPU: nothing; a fake NVML: its clock and reasons)."""

from __future__ import annotations

import sys
import types

import torch

from fuseinfer.bench import gpu_clocks


def test_mask_names_every_set_bit():
    assert gpu_clocks.limit_names(0) == []
    assert gpu_clocks.limit_names(0x4 | 0x40) == ["sw_power_cap", "hw_thermal"]
    assert gpu_clocks.limit_names(0x1000 | 0x8) == ["hw_slowdown", "0x1000"]


def test_no_gpu_reads_nothing(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_clocks.clock_state() == {}


def test_reads_the_clock_and_the_reasons_nvml_gives(monkeypatch):
    fake = types.SimpleNamespace(
        NVML_CLOCK_SM=1,
        nvmlDeviceGetClockInfo=lambda handle, kind: {("h", 1): 1755}[(handle, kind)],
        nvmlDeviceGetCurrentClocksEventReasons=lambda handle: 0x4)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "_get_pynvml_handler", lambda device=None: "h",
                        raising=False)
    assert gpu_clocks.clock_state() == {"sm_mhz": 1755, "clock_limits": ["sw_power_cap"]}
    fake.nvmlDeviceGetClockInfo = lambda handle, kind: 1 / 0  # NVML failing mid-run
    assert gpu_clocks.clock_state() == {}
