"""One-line progress for long benchmark runs."""

from __future__ import annotations

import os
import sys
from types import TracebackType
from typing import TextIO


class Progress:
    """Prints `[i/total] label: message` per step.

    On a terminal the line is rewritten in place; elsewhere (logs, pipes) each step gets
    its own line so nothing is lost. FUSEINFER_QUIET=1 silences it.
    """

    def __init__(self, total: int, label: str, stream: TextIO | None = None) -> None:
        self.total = total
        self.label = label
        # Looked up at construction, not definition, so redirected stderr is honoured.
        self.stream = sys.stderr if stream is None else stream
        self.quiet = os.environ.get("FUSEINFER_QUIET") == "1"
        isatty = getattr(self.stream, "isatty", None)
        self.tty = bool(isatty and isatty())
        self.count = 0
        self._open_width = 0  # length of the unfinished TTY line, 0 when none

    def step(self, message: str) -> None:
        """Advance by one and show `message`."""
        self.count += 1
        if self.quiet:
            return
        text = f"[{self.count}/{self.total}] {self.label}: {message}"
        if self.tty:
            # Pad so a shorter message fully covers the previous one.
            self.stream.write("\r" + text.ljust(self._open_width))
            self._open_width = max(len(text), self._open_width)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the rewritten line so later output starts on a fresh one."""
        if self._open_width and not self.quiet:
            self.stream.write("\n")
            self.stream.flush()
        self._open_width = 0

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
