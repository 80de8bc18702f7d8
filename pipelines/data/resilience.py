"""How the training feed's Ray Data tasks survive failures (set in the driver, before datasets exist).

* **A task's process dies** (a lost node, an out-of-memory kill, a read task ending itself after
  its ``import torch`` was cut short; see :func:`pipelines.data.read_tasks.load_crop_views`): Ray Data
  retries the task in another process without limit (its own default, kept).
* **A read task raises a transient error** (the run's monitor briefly unreachable, a storage
  service timing out): the task is retried up to :data:`MAX_MAP_RETRIES` times. Ray Data retries
  no user error by default, so one such error would fail the whole dataset and so the run.
* **Anything else a read task raises** (a bug, an unreadable filesystem) fails the dataset at
  once, and the Train run's ``trainer.max_failures`` decides whether to restart it. Bad images
  never raise: they are dropped and counted by the monitor.

The run's monitor actor is pinned to the driver's node and not restarted: a restarted monitor
would forget the bad-image counts and the epoch, and the run ends with the driver's node anyway.
"""

from __future__ import annotations

from typing import Any

MAX_MAP_RETRIES = 3
TRANSIENT_ERRORS = [  # matched against the error text (substring first, then as a regex)
    "ActorUnavailableError",
    "GetTimeoutError",
    "RpcError",
    "AWS Error",
    "Connection reset",
    "Connection refused",
    "Broken pipe",
    "timed out",
    "Stale file handle",
]


def configure(context: Any | None = None) -> Any:
    """Set the retry settings on ``context`` (default: the current ``DataContext``); return it."""
    if context is None:
        from ray.data import DataContext

        context = DataContext.get_current()
    context.retried_map_errors = list(TRANSIENT_ERRORS)
    context.max_map_retries = MAX_MAP_RETRIES
    return context
