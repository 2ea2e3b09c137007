"""Progress on standard error for long runs, only when it is a terminal.

A stage line is printed when a stage starts and overwritten by the next
one; nothing is printed to pipes or files, so CI logs and reports stay
clean and deterministic.
"""

from __future__ import annotations

import time
from typing import IO


class Progress:
    def __init__(self, stream: IO | None = None, enabled: bool | None = None) -> None:
        self.stream = stream
        if enabled is None:
            enabled = stream is not None and hasattr(stream, "isatty") and stream.isatty()
        self.enabled = enabled
        self.start = time.monotonic()
        self._shown = False

    def step(self, message: str) -> None:
        if not self.enabled or self.stream is None:
            return
        elapsed = time.monotonic() - self.start
        self.stream.write(f"\r\x1b[2Kkspec: {message} ({elapsed:.1f} s)")
        self.stream.flush()
        self._shown = True

    def done(self) -> None:
        if self._shown and self.stream is not None:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._shown = False


QUIET = Progress(None, False)
