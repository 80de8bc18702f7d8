"""A one-line progress display for long jobs (no extra dependency)."""

from __future__ import annotations

import sys
import time
from typing import TextIO


def format_seconds(seconds: float) -> str:
    """``75`` -> ``1m15s``; ``3700`` -> ``1h01m``."""
    seconds = max(int(seconds), 0)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Prints ``label: done/total units  rate/s  ETA`` as work completes.

    On a terminal the line is redrawn in place; elsewhere (CI logs, files) a line is printed at
    most every ``every`` seconds, and always at the end.
    """

    def __init__(
        self, label: str, total: int, unit: str = "chunks", stream: TextIO | None = None, every: float = 5.0
    ) -> None:
        """Start timing.

        Args:
            label: what is being done.
            total: units to do.
            unit: the unit's name.
            stream: where to print (default: standard error).
            every: seconds between lines when not on a terminal.
        """
        self.label, self.total, self.unit = label, total, unit
        self.stream = stream or sys.stderr
        self.every = every
        self.done = 0
        self.extra = ""
        self.start = self.last = time.monotonic()
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, n: int = 1, extra: str = "") -> None:
        """Count ``n`` more units; ``extra`` is shown after the counts."""
        self.done += n
        self.extra = extra
        now = time.monotonic()
        if self.tty or now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self._print(end="\n" if self.done >= self.total or not self.tty else "")

    def line(self) -> str:
        """The current progress text."""
        elapsed = time.monotonic() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else float("nan")
        eta_text = format_seconds(eta) if eta == eta else "?"
        text = f"{self.label}: {self.done}/{self.total} {self.unit}"
        if self.extra:
            text += f"  {self.extra}"
        return text + f"  {format_seconds(elapsed)} elapsed, ETA {eta_text}"

    def _print(self, end: str) -> None:
        prefix = "\r" if self.tty else ""
        print(prefix + self.line(), end=end, file=self.stream, flush=True)
