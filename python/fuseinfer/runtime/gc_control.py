"""Garbage-collector controls for the engine: freeze the long-lived objects after warm-up
(so later collections skip them), keep collections out of CUDA-graph capture, and warn when
a collection pauses the loop for longer than a threshold."""

from __future__ import annotations

import contextlib
import gc
import logging
import time
from collections.abc import Iterator

log = logging.getLogger("fuseinfer.runtime")


_deliberate = False  # a collection asked for on purpose is no pause to warn about


def freeze_after_warmup() -> int:
    """Collect once, then move every surviving object to the permanent generation.
    Returns how many objects are now frozen."""
    global _deliberate
    _deliberate = True
    try:
        gc.collect()
    finally:
        _deliberate = False
    gc.freeze()
    return gc.get_freeze_count()


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    """No automatic collection inside (CUDA-graph capture); the previous state after."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class GcPauseMonitor:
    """Logs a warning for every collection that takes longer than `threshold_s`."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self.pauses: list[tuple[int, float]] = []  # (generation, seconds) over threshold
        self._start = 0.0

    def _callback(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._start = time.perf_counter()
            return
        took = time.perf_counter() - self._start
        if took > self.threshold_s and not _deliberate:
            self.pauses.append((info.get("generation", -1), took))
            log.warning("garbage collection of generation %s paused the engine for %.1f ms "
                        "(threshold %.1f ms)", info.get("generation"), took * 1e3,
                        self.threshold_s * 1e3)

    def __enter__(self) -> GcPauseMonitor:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)
