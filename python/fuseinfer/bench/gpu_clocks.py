"""The GPU's SM clock and what holds it down, read right after a timing: where two runs of
one kernel differ (the H200's 1 x 16k prefill by 9% between two calls on 2026-12-02), they
say whether the GPU ran slower or the kernel did."""

from __future__ import annotations

from typing import Any

# NVML's clocks-event reasons (nvmlClocksEventReason*), by bit
CLOCK_LIMITS = {0x1: "idle", 0x2: "application_clocks", 0x4: "sw_power_cap",
                0x8: "hw_slowdown", 0x10: "sync_boost", 0x20: "sw_thermal",
                0x40: "hw_thermal", 0x80: "hw_power_brake", 0x100: "display_clocks"}


def limit_names(mask: int) -> list[str]:
    """The reasons set in an NVML clocks-event mask, by name (unknown bits as hex)."""
    names = [name for bit, name in CLOCK_LIMITS.items() if mask & bit]
    rest = mask & ~sum(CLOCK_LIMITS)
    return names + ([hex(rest)] if rest else [])


def clock_state(device: Any = None) -> dict[str, Any]:
    """{"sm_mhz": the SM clock over NVML's last sample period, "clock_limits": the reasons
    active now} for the CUDA device; {} where NVML cannot be read (no GPU, no pynvml)."""
    try:
        import torch

        if not torch.cuda.is_available():
            return {}
        import pynvml

        handle = torch.cuda._get_pynvml_handler(device)  # maps CUDA_VISIBLE_DEVICES
        sm_mhz = int(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
        reasons = getattr(pynvml, "nvmlDeviceGetCurrentClocksEventReasons", None) \
            or pynvml.nvmlDeviceGetCurrentClocksThrottleReasons
        return {"sm_mhz": sm_mhz, "clock_limits": limit_names(int(reasons(handle)))}
    except Exception:  # a reading, never a reason to fail a benchmark
        return {}
