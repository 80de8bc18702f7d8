"""The run's data monitor: a small Ray actor that holds the current epoch and the bad images met.

Kept apart from :mod:`pipelines.data.loader` so that the actor's process imports no torch or Ray
Data (about 3 CPU-seconds per run on 2 cores); Ray Data tasks report each batch to it and Train
workers and the driver read it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from pipelines.data.decode import BadImageLog

MAX_TOKENS = 100_000  # batch tokens remembered for de-duplicating retried reports


class DataMonitor:
    """A small Ray actor per run: the current epoch and the bad images met while training."""

    def __init__(self, max_bad_fraction: float, min_seen: int = 100) -> None:
        """Start with epoch 0 and an empty log."""
        self.epoch = 0
        self.log = BadImageLog(max_bad_fraction=max_bad_fraction, min_seen=min_seen)
        self.seen_tokens: dict[str, None] = {}  # insertion-ordered; the oldest are forgotten

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch whose crops are being drawn."""
        self.epoch = int(epoch)

    def get_epoch(self) -> int:
        """The current epoch."""
        return self.epoch

    def add(self, good: int, bad: list[dict[str, str]]) -> None:
        """Count a batch's good images and record its bad ones."""
        self.log.add_good(good)
        for entry in bad:
            self.log.add_bad(entry["path"], entry["reason"])

    def report(self, token: str, good: int, bad: list[dict[str, str]]) -> int:
        """Count a batch once (a retried call with the same ``token`` is not counted again); the epoch."""
        if token not in self.seen_tokens:
            self.seen_tokens[token] = None
            if len(self.seen_tokens) > MAX_TOKENS:  # a retry comes within minutes, not epochs
                del self.seen_tokens[next(iter(self.seen_tokens))]
            self.add(good, bad)
        return self.epoch

    def snapshot(self) -> dict[str, Any]:
        """Counts, the bad share, the limit and the bad files (each listed once) for the report.

        Counts are of reads: a bad file met in every epoch counts in each.
        """
        return {
            "good": self.log.good,
            "bad": self.log.bad_count,
            "bad_fraction": self.log.bad_fraction,
            "max_bad_fraction": self.log.max_bad_fraction,
            "bad_files": list({(b["path"], b["reason"]): b for b in self.log.bad}.values()),
        }

    def check(self) -> None:
        """Raise ``TooManyBadImagesError`` (with the report) past ``max_bad_fraction``."""
        self.log.check()


MONITOR_NAMESPACE = "cacr"  # fixed, so that tasks and Train workers of any job find the actor


def monitor(run: str, max_bad_fraction: float = 0.01, min_seen: int = 100) -> Any:
    """Get or create the run's :class:`DataMonitor` actor (named ``cacr-data-<run>``).

    It lives on the driver's node (the run ends with that node anyway), so losing another node
    keeps the counts.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    actor = ray.remote(num_cpus=0)(DataMonitor)
    return actor.options(
        name=f"cacr-data-{run}", namespace=MONITOR_NAMESPACE, get_if_exists=True, scheduling_strategy=here
    ).remote(max_bad_fraction, min_seen)


def find_monitor(run: str) -> Any:
    """The run's :class:`DataMonitor` actor, or ``None`` when there is none."""
    import ray

    try:
        return ray.get_actor(f"cacr-data-{run}", namespace=MONITOR_NAMESPACE)
    except ValueError:
        return None


def call_monitor(method: Any, *args: Any, attempts: int = 6) -> Any:
    """Call a monitor method and wait for it, retrying while the actor is unreachable.

    Under heavy load (two Tune trials on 2 cores) a call was seen to time out with
    ``ActorUnavailableError`` and fail the whole run; callers that count pass a token, so a
    retried call is never counted twice.
    """
    import ray
    from ray.exceptions import ActorUnavailableError, GetTimeoutError

    for attempt in range(attempts):
        try:
            return ray.get(method.remote(*args), timeout=120)
        except (ActorUnavailableError, GetTimeoutError):
            if attempt == attempts - 1:
                raise
            time.sleep(min(30.0, 2.0**attempt))
    raise AssertionError("unreachable")


def report_to_monitor(actor: Any, good: int, bad: list[dict[str, str]]) -> int:
    """Count a batch in the run's monitor (once, even when the call is retried); the epoch."""
    return int(call_monitor(actor.report, uuid.uuid4().hex, good, bad))


def epoch_of(actor: Any) -> int:
    """The epoch the run's monitor holds (set by rank 0 before each epoch's data is read)."""
    return int(call_monitor(actor.get_epoch))
