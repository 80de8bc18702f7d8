"""Stopping a search cleanly: SIGINT or SIGTERM ends the trials, Tune saves its state, we say how to resume.

Tune stops gracefully on SIGINT only (it saves the experiment and returns); Python's default
SIGTERM, what a scheduler or a closed terminal sends, would kill the driver mid-write. While a
search runs, SIGTERM is passed on to Tune as SIGINT.
"""

from __future__ import annotations

import os
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
    """Around ``Tuner.fit()``: SIGTERM reaches Tune as SIGINT; yields ``{"signal": name}`` once one came.

    Tune (Ray 2.60, ``ray.tune.tune._setup_signal_catching``) installs its own SIGINT handler for
    the run and puts the previous one back only when a stop signal interrupts it, so after
    ``fit()`` our handler being in place again means the run was stopped. The integration test
    (a search stopped by SIGTERM, another run to the end) fails if a Ray upgrade changes that.
    """
    seen: dict[str, Any] = {}

    def on_term(signum: int, frame: Any) -> None:
        seen["signal"] = "SIGTERM"
        signal.raise_signal(signal.SIGINT)  # Tune's handler: stop the trials, save the state

    def on_int(signum: int, frame: Any) -> None:  # only outside Tune's run
        seen.setdefault("signal", "SIGINT")
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term), signal.signal(signal.SIGINT, on_int)
    try:
        yield seen
    finally:
        if signal.getsignal(signal.SIGINT) is on_int and not os.environ.get("TUNE_DISABLE_SIGINT_HANDLER"):
            seen.setdefault("signal", "SIGINT")  # Tune handed SIGINT back: it was stopped
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def raise_stopped(name: str, seen: dict[str, Any]) -> None:
    """Raise the error that tells the user the search stopped and how to resume it."""
    error = SearchTerminatedError if seen.get("signal") == "SIGTERM" else SearchInterruptedError
    raise error(
        f"search {name} stopped by {seen.get('signal', 'SIGINT')}: its state is saved; "
        "run the same command again to resume it"
    )
