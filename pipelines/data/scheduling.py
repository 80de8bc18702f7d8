"""Ray Data scheduler settings for CPU-bound decode-and-crop pipelines.

Measured with Ray 2.60 on 2 cores (``benchmarks/data.py``), two of Ray Data's built-in timings
left the workers idle for about a third of every epoch:

* the streaming executor waits up to 0.1 s in ``ray.wait`` for *all* running tasks before it
  hands out the next one, so a worker sat idle 0.15-0.25 s after each task (two rounds);
* the executor refreshes the cluster's resource limits once a second, and at the start of each
  epoch's execution the second worker got its first task only after that refresh (1.0 s late).

:func:`apply` shortens both (``WAIT_S``, ``LIMITS_REFRESH_S``). The values are module and class
attributes of Ray's private modules, read each time they are used, so setting them in a process
changes every executor that process runs. The executor runs wherever a dataset is iterated: the
driver, a Train worker (unsplit datasets) and Ray Data's split coordinator actor (split ones),
which never imports this project's modules. So entry points start Ray with :func:`apply` as the
job's ``worker_process_setup_hook`` (``pipelines.ray_session.RUNTIME_ENV``: Ray runs it in every
worker process of the job) and call it in the driver; :mod:`pipelines.data.loader` also calls
it when imported, for scripts that start Ray themselves.

Ray is pinned exactly (``constraints.txt``); ``tests/unit/test_data_scheduling.py`` fails when an
upgrade renames either attribute, and :func:`apply` then warns once and leaves Ray as it is.
"""

from __future__ import annotations

import warnings

WAIT_S = 0.01
LIMITS_REFRESH_S = 0.1
RAY_DEFAULTS = {"wait_s": 0.1, "limits_refresh_s": 1.0}  # Ray 2.60's own values

_TARGETS = {
    "wait_s": (
        "ray.data._internal.execution.streaming_executor_state",
        None,
        "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S",
    ),
    "limits_refresh_s": (
        "ray.data._internal.execution.resource_manager",
        "ResourceManager",
        "GLOBAL_LIMITS_UPDATE_INTERVAL_S",
    ),
}


def _holder(module: str, cls: str | None) -> object:
    import importlib

    mod = importlib.import_module(module)
    return getattr(mod, cls) if cls else mod


def current() -> dict[str, float]:
    """Ray Data's current values of the two timings (seconds), by our names."""
    return {name: float(getattr(_holder(m, c), a)) for name, (m, c, a) in _TARGETS.items()}


def apply(wait_s: float = WAIT_S, limits_refresh_s: float = LIMITS_REFRESH_S) -> dict[str, float] | None:
    """Set the executor's task-completion wait and resource-limit refresh in this process.

    Args:
        wait_s: longest ``ray.wait`` of the scheduling loop between dispatches.
        limits_refresh_s: how often the executor re-reads the cluster's resources.

    Returns:
        The previous values (pass them back as keyword arguments to restore Ray's), or ``None``
        when this Ray version lacks the attributes (a warning says so; nothing is changed).
    """
    try:
        before = current()
    except (ImportError, AttributeError) as err:
        warnings.warn(
            f"Ray Data scheduler settings not applied ({err}); data loading works but may leave "
            "workers idle between tasks",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    for name, value in {"wait_s": wait_s, "limits_refresh_s": limits_refresh_s}.items():
        module, cls, attr = _TARGETS[name]
        setattr(_holder(module, cls), attr, value)
    return before
