"""A long suite stopped by SIGTERM (`timeout`, a device call's deadline) keeps what it
measured: the signal raises RunCut wherever the run is, the suite stops there, and the rows
finished before it are reported, written and recorded as a run cut short (the run's
`cut_short` says after how many cases). Nothing is timed after the signal."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class RunCut(Exception):
    """SIGTERM arrived during a run."""


@contextmanager
def cut_by_sigterm() -> Iterator[None]:
    """SIGTERM raises RunCut inside the block (the main thread only: elsewhere Python
    cannot take signals, and the block runs unchanged)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise RunCut(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def cut_note(done: int, total: int, err: RunCut) -> str:
    return f"after {done} of {total} cases ({err})"
