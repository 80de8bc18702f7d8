"""Stopping a pretraining run cleanly: SIGINT or SIGTERM aborts Ray Train's run, we say how to resume.

Ray Train (2.60, ``DataParallelTrainer._register_sigint_handler``) installs its own SIGINT handler
inside ``fit()``: it aborts the workers, then ``fit()`` raises ``SystemExit(1)`` with no word on
the run, and the handler stays installed afterwards. Python's default SIGTERM (what a scheduler or
a closed terminal sends) would kill the driver at once. Around ``fit()``, SIGTERM is passed on as
SIGINT, and which signal came is read from a wakeup file descriptor: Python writes the number of
every signal it handles there, whichever handler runs.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


class RunInterruptedError(RuntimeError):
    """The run was stopped by SIGINT; its complete checkpoints are kept (exit code 130)."""

    exit_code = 130


class RunTerminatedError(RunInterruptedError):
    """The run was stopped by SIGTERM; its complete checkpoints are kept (exit code 143)."""

    exit_code = 143


def _read_all(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""


@contextmanager
def signals_seen() -> Iterator[dict[str, Any]]:
    """Around ``TorchTrainer.fit()``: SIGTERM reaches Ray Train as SIGINT; ``{"signal": name}`` once one came.

    The dict is filled on the way out (``SIGTERM`` when one came, else ``SIGINT``). The SIGINT
    and SIGTERM handlers and the wakeup descriptor in place before are put back. Off the main
    thread (where Python allows no signal handler) it yields a dict that stays empty.
    """
    seen: dict[str, Any] = {}
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)

    def on_term(signum: int, frame: Any) -> None:
        signal.raise_signal(signal.SIGINT)  # Ray Train's handler: abort the workers

    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    previous = signal.signal(signal.SIGTERM, on_term), signal.getsignal(signal.SIGINT)
    try:
        yield seen
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])
        signal.set_wakeup_fd(previous_fd)
        got = _read_all(read_end)
        os.close(read_end)
        os.close(write_end)
        if signal.SIGTERM in got:
            seen["signal"] = "SIGTERM"
        elif signal.SIGINT in got:
            seen["signal"] = "SIGINT"


def stopped_error(name: str, seen: dict[str, Any], last_checkpoint: str | None) -> RunInterruptedError:
    """The error that tells the user the run stopped, where, and how to resume it."""
    error = RunTerminatedError if seen.get("signal") == "SIGTERM" else RunInterruptedError
    where = f"last complete checkpoint {last_checkpoint}" if last_checkpoint else "no checkpoint yet"
    return error(
        f"run {name} stopped by {seen.get('signal', 'SIGINT')} ({where}); "
        "run the same command again to resume it"
    )
