"""A stopped run: SIGTERM reaches Ray Train as SIGINT, the signal is known afterwards (no Ray).

``ray_train_like`` installs a SIGINT handler the way Ray Train's ``fit()`` does (Ray 2.60): it
replaces ours, never puts it back, and the interrupted wait ends ``fit()`` with ``SystemExit``.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from pipelines.training.run import STOPS, RunOutcome, results_table
from pipelines.training.stop import RunInterruptedError, RunTerminatedError, signals_seen, stopped_error


def ray_train_like() -> list[int]:
    aborted: list[int] = []

    def handler(signum, frame) -> None:
        aborted.append(signum)
        raise SystemExit(1)

    signal.signal(signal.SIGINT, handler)
    return aborted


@pytest.fixture(autouse=True)
def keep_handlers():
    saved = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM), signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(saved[2])
    yield
    signal.signal(signal.SIGINT, saved[0])
    signal.signal(signal.SIGTERM, saved[1])
    signal.set_wakeup_fd(saved[2])


@pytest.mark.parametrize(
    ("sent", "name"), [(signal.SIGTERM, "SIGTERM"), (signal.SIGINT, "SIGINT"), (None, None)]
)
def test_a_stop_signal_reaches_ray_train_as_sigint_and_is_known_afterwards(sent, name):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    ended = None
    with signals_seen() as seen:
        aborted = ray_train_like()  # what TorchTrainer.fit() does when it starts
        try:
            if sent is not None:
                os.kill(os.getpid(), sent)
        except SystemExit as stop:
            ended = stop.code
    assert aborted == ([signal.SIGINT] if sent else [])
    assert ended == (1 if sent else None)
    assert seen == ({"signal": name} if name else {})  # a run to the end: nothing seen
    # ours are back, Ray Train's handler is not left behind, and no wakeup descriptor stays set
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert signal.set_wakeup_fd(-1) == -1


def test_off_the_main_thread_nothing_is_installed():
    before = signal.getsignal(signal.SIGTERM)
    got: list[dict] = []

    def run() -> None:
        with signals_seen() as seen:
            got.append(seen)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert got == [{}] and signal.getsignal(signal.SIGTERM) is before


@pytest.mark.parametrize(
    ("seen", "where", "error", "code"),
    [
        ({"signal": "SIGTERM"}, "/runs/a/checkpoint_e0001_s00000009", RunTerminatedError, 143),
        ({"signal": "SIGINT"}, None, RunInterruptedError, 130),
    ],
)
def test_the_stop_names_the_signal_the_checkpoint_and_its_exit_code(seen, where, error, code):
    err = stopped_error("a", seen, where)
    assert type(err) is error
    assert next(v for k, v in STOPS.items() if isinstance(err, k)) == (
        "",
        code,
    )  # what the command exits with
    said = f"last complete checkpoint {where}" if where else "no checkpoint yet"
    assert str(err) == f"run a stopped by {seen['signal']} ({said}); run the same command again to resume it"


def test_the_closing_lines_of_a_run_stopped_at_an_epoch_say_how_to_continue_it():
    """It listed results.md and report.png, which a run without its final evaluation has not written."""
    cfg = {"trainer": {"epochs": 6, "stop_at_epoch": 2}, "objective": {"name": "cacr_inbatch", "K": 4}}
    lines = results_table(RunOutcome("/runs/a", {}), cfg).splitlines()
    assert lines[0] == (
        "stopped after epoch 2 of 6 (trainer.stop_at_epoch): no final evaluation yet; the same command "
        "without trainer.stop_at_epoch continues the run"
    )
    assert lines[1] == "run folder:  /runs/a"
    judged = {"knn_top1": 41.2, "knn_k": 200}
    done = results_table(
        RunOutcome("/runs/a", {"pretrained": judged, "random_init": {**judged, "knn_top1": 34.45}}), cfg
    )
    assert (
        "kNN gain over random init: +6.75 points" in done
        and "run folder:  /runs/a (results.md, report.png)" in done
    )
    assert "stopped after" not in done
