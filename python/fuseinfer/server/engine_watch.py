"""Notice the moment the engine process ends, without reaping it.

A thread blocks in `waitid(WNOWAIT)` on the engine's pid: the kernel wakes it when the
process exits (a crash, an OOM kill, a SIGKILL), and the process stays waitable, so
multiprocessing's own join still sees its exit code. The HTTP process's reader thread
cannot notice this by itself: the outbox pipe has a writer in the HTTP process too, so a
dead engine never produces an end of file, only silence.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable


def wait_for_exit(pid: int) -> int | None:
    """Block until child `pid` ends; its exit code (-N when signal N killed it), or None
    when it is not waitable any more (this process already joined it: a deliberate stop)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:
        return None
    if info is None:  # WNOHANG was not asked for; kept for the type checker
        return None
    if info.si_code == os.CLD_EXITED:
        return info.si_status
    return -info.si_status  # killed or dumped: the signal number


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def watch_process(pid: int, on_exit: Callable[[int | None], None]) -> threading.Thread:
    """Call `on_exit(exit code or None)` on a daemon thread once child `pid` ends."""
    thread = threading.Thread(target=lambda: on_exit(wait_for_exit(pid)), daemon=True,
                              name="engine-watch")
    thread.start()
    return thread
