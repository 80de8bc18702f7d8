"""Stopping a search cleanly: SIGINT or SIGTERM ends the trials, Tune saves its state, we say how to resume.

Tune stops gracefully on SIGINT only (it saves the experiment and returns); Python's default
SIGTERM, what a scheduler or a closed terminal sends, would kill the driver mid-write. While a
search runs, SIGTERM is passed on to Tune as SIGINT.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class SearchInterruptedError(RuntimeError):
    """The search was stopped by SIGINT; its state is saved (exit code 130)."""

    exit_code = 130


class SearchTerminatedError(SearchInterruptedError):
    """The search was stopped by SIGTERM; its state is saved (exit code 143)."""

    exit_code = 143


@contextmanager
def graceful_stop() -> Iterator[dict[str, Any]]:
    """Within the block SIGTERM reaches Tune as SIGINT; yields ``{"signal": <name>}`` once one came."""
    seen: dict[str, Any] = {}

    def on_term(signum: int, frame: Any) -> None:
        seen["signal"] = "SIGTERM"
        signal.raise_signal(signal.SIGINT)  # Tune's handler: stop the trials, save the state

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous)


def interrupted(grid: Any) -> bool:
    """Whether Tune returned before every trial ended (a stop signal rather than the last trial)."""
    return grid.num_terminated + grid.num_errors < len(grid)


def raise_stopped(name: str, seen: dict[str, Any]) -> None:
    """Raise the error that tells the user the search stopped and how to resume it."""
    error = SearchTerminatedError if seen.get("signal") == "SIGTERM" else SearchInterruptedError
    raise error(
        f"search {name} stopped by {seen.get('signal', 'SIGINT')}: its state is saved; "
        "run the same command again to resume it"
    )
