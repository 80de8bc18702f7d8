"""Shorter Ray Data scheduler timings, so CPU-bound decode-and-crop tasks follow each other without gaps.

Ray Data's streaming executor waits up to 0.1 s in ``ray.wait`` before it hands out the next task
(ray-project/ray#45934, #42377) and refreshes its resource limits once a second; on small
machines both left workers idle for about a third of an epoch (docs/architecture.md has the
measurements). :func:`apply` shortens both in the process it runs in; entry points also install
:func:`apply_on_import` as the job's ``worker_process_setup_hook``, because the executor of a
split dataset runs in Ray's own actors. The attributes are private to Ray, which is pinned
exactly; ``tests/unit/data/test_data_scheduling.py`` fails when an upgrade renames them, and
:func:`apply` then warns once and leaves Ray as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

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


def _owner(module: ModuleType, cls: str | None) -> object:
    """What holds the attribute: the module itself or one of its classes."""
    return getattr(module, cls) if cls else module


def _holder(module: str, cls: str | None) -> object:

    return _owner(importlib.import_module(module), cls)


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


class _SetOnImport(importlib.abc.MetaPathFinder):
    """Sets our values in Ray Data's modules right after they are first imported.

    It finds nothing itself: for a watched module it asks the finders after it for the spec and
    wraps that spec's loader (a fresh loader per module) so the values are set once the module
    has run; it removes itself when every watched module has been seen.
    """

    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.pending = {module for module, _, _ in _TARGETS.values()}

    def find_spec(self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None) -> Any:
        """The normal spec of a watched module, its loader set to apply our values after loading."""
        if fullname not in self.pending:
            return None
        self.pending.discard(fullname)
        if not self.pending and self in sys.meta_path:
            sys.meta_path.remove(self)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader, values = spec.loader, self.values
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            for name, (mod, cls, attr) in _TARGETS.items():
                if mod == fullname:
                    setattr(_owner(module, cls), attr, values[name])

        loader.exec_module = exec_module
        return spec


def apply_on_import(wait_s: float = WAIT_S, limits_refresh_s: float = LIMITS_REFRESH_S) -> None:
    """:func:`apply` now if Ray Data's modules are loaded, else as soon as the process loads them.

    The job's ``worker_process_setup_hook``: cheap in the many worker processes that never use Ray
    Data.
    """
    values = {"wait_s": wait_s, "limits_refresh_s": limits_refresh_s}
    loaded = [m for m, _, _ in _TARGETS.values() if m in sys.modules]
    if loaded:
        apply(**values)
        return
    if not any(isinstance(f, _SetOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SetOnImport(values))
