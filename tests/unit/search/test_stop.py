"""A stopped search: SIGTERM reaches Tune as SIGINT, and the error says how to resume (no Ray).

``tune_like`` installs a SIGINT handler the way Ray Tune's run does: it remembers the handler
it replaced and puts it back when a stop signal comes (and leaves itself in place otherwise).
"""

from __future__ import annotations

import os
import signal

import pytest

from pipelines.search.run import STOPS
from pipelines.search.stop import SearchInterruptedError, SearchTerminatedError, graceful_stop, raise_stopped


def tune_like() -> list[int]:
    stopped: list[int] = []
    original = signal.getsignal(signal.SIGINT)

    def handler(signum, frame) -> None:
        stopped.append(signum)
        signal.signal(signal.SIGINT, original)

    signal.signal(signal.SIGINT, handler)
    return stopped


@pytest.fixture(autouse=True)
def keep_handlers():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])


@pytest.mark.parametrize(
    ("sent", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT"), (None, None)]
)
def test_a_stop_signal_reaches_tune_as_sigint_and_is_remembered(sent, name):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with graceful_stop() as seen:
        stopped = tune_like()  # what Tuner.fit() does when it starts
        if sent is not None:
            os.kill(os.getpid(), sent)
    assert stopped == ([signal.SIGINT] if sent else [])
    assert seen == ({"signal": name} if name else {})  # a run to the end: nothing seen
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


@pytest.mark.parametrize(
    ("seen", "error", "code"),
    [
        ({"signal": "SIGTERM"}, SearchTerminatedError, 143),
        ({"signal": "SIGINT"}, SearchInterruptedError, 130),
    ],
)
def test_the_stop_names_the_signal_the_resume_and_its_exit_code(seen, error, code):
    with pytest.raises(error) as info:
        raise_stopped("baselines", seen)
    assert str(info.value) == (
        f"search baselines stopped by {seen['signal']}: its state is saved; "
        "run the same command again to resume it"
    )
    handled = next(v for k, v in STOPS.items() if isinstance(info.value, k))
    assert handled == ("", code)
