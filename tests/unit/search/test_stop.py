"""A stopped search: SIGTERM reaches Tune as SIGINT, and the error says how to resume (no Ray)."""

from __future__ import annotations

import os
import signal

import pytest

from pipelines.search.run import STOPS
from pipelines.search.stop import (
    SearchInterruptedError,
    SearchTerminatedError,
    graceful_stop,
    interrupted,
    raise_stopped,
)


class Grid:
    def __init__(self, trials: int, terminated: int, errors: int) -> None:
        self.trials, self.num_terminated, self.num_errors = trials, terminated, errors

    def __len__(self) -> int:
        return self.trials


def test_sigterm_inside_the_block_becomes_sigint_and_the_old_handler_comes_back():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt), graceful_stop() as seen:  # Python's SIGINT handler
        os.kill(os.getpid(), signal.SIGTERM)
    assert seen == {"signal": "SIGTERM"}
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_search_is_interrupted_when_a_trial_neither_ended_nor_failed():
    assert interrupted(Grid(4, 2, 1))
    assert not interrupted(Grid(4, 3, 1))


@pytest.mark.parametrize(
    ("seen", "error", "code"),
    [({"signal": "SIGTERM"}, SearchTerminatedError, 143), ({}, SearchInterruptedError, 130)],
)
def test_the_stop_names_the_signal_the_resume_and_its_exit_code(seen, error, code):
    with pytest.raises(error) as info:
        raise_stopped("baselines", seen)
    assert str(info.value) == (
        f"search baselines stopped by {seen.get('signal', 'SIGINT')}: its state is saved; "
        "run the same command again to resume it"
    )
    handled = next(v for k, v in STOPS.items() if isinstance(info.value, k))
    assert handled == ("", code)
