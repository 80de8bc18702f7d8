"""Ray Data scheduler settings, so CPU-bound decode-and-crop tasks follow each other without gaps.

Ray Data's streaming executor waits up to 0.1 s in ``ray.wait`` for *all* its running tasks
before it hands out the next one (ray-project/ray#45934, #42377) and refreshes its resource
limits once a second; on small machines both left workers idle for about a third of an epoch
(docs/architecture.md has the measurements). A shorter wait alone makes the loop spin instead
(0.01 s: 0.8 ms of the driver's CPU per 224-px photo), so the loop's wait also returns at the
first *new* output of any task (:class:`PromptWait`) and the timeout only bounds how late it
notices what ``ray.wait`` cannot see (room freed by the consumer). :func:`apply` sets these in
the process it runs in; entry points also install :func:`apply_on_import` as the job's
``worker_process_setup_hook``, because the executor of a split dataset runs in Ray's own
actors. Two more settings are about shares of the cluster: Ray Data divides the cluster's CPUs
among the datasets executing at once (its autoscaling coordinator), and a dataset whose process
died without shutting down (a run's worker or driver killed, a search trial stopped by ASHA)
kept its share for 180 s, so a resumed run read with half the CPUs on 2 cores for three
minutes; its share now lapses after :data:`RESERVATION_EXPIRY_S` (live datasets renew theirs
every 10 s). Ray Train books its
workers' resources there too, ahead of datasets, and a killed driver's booking stood 180 s as
well; it lapses after :data:`TRAIN_RESERVATION_EXPIRY_S` (live runs renew every 20 s). The
attributes are private to Ray, which is pinned exactly; ``tests/unit/data/test_data_scheduling.py``
fails when an upgrade renames them, and :func:`apply` then warns once and leaves Ray as it is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
import time
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

WAIT_S = 0.05
LIMITS_REFRESH_S = 0.1
PROMPT_WAIT = True
METADATA_ON_THREAD = False
RESERVATION_EXPIRY_S = 30  # three of the 10 s between a live dataset's renewals
TRAIN_RESERVATION_EXPIRY_S = 60  # three of the 20 s between a live Train run's renewals
RAY_DEFAULTS = {  # Ray 2.60's own
    "wait_s": 0.1,
    "limits_refresh_s": 1.0,
    "metadata_on_thread": True,
    "prompt_wait": False,
    "reservation_expiry_s": 180,
    "train_reservation_expiry_s": 180,
}
OURS = {  # what apply() and apply_on_import() set by default
    "wait_s": WAIT_S,
    "limits_refresh_s": LIMITS_REFRESH_S,
    "metadata_on_thread": METADATA_ON_THREAD,
    "prompt_wait": PROMPT_WAIT,
    "reservation_expiry_s": RESERVATION_EXPIRY_S,
    "train_reservation_expiry_s": TRAIN_RESERVATION_EXPIRY_S,
}
_LOOP_MODULE = "ray.data._internal.execution.streaming_executor_state"  # calls ray.wait in its loop

_TARGETS = {
    "wait_s": (_LOOP_MODULE, None, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"),
    "limits_refresh_s": (
        "ray.data._internal.execution.resource_manager",
        "ResourceManager",
        "GLOBAL_LIMITS_UPDATE_INTERVAL_S",
    ),
    # read when each executor starts (RAY_DATA_METADATA_PREFETCH_ON_THREAD at import)
    "metadata_on_thread": ("ray.data._internal.execution.metadata_fetcher", None, "_PREFETCH_ON_THREAD"),
    # how long a dataset's share of the cluster outlives its last renewal: the default autoscaler
    # (RAY_DATA_CLUSTER_AUTOSCALER=RATE_BASED) takes it as a keyword default of its __init__, which
    # _set_values sets too (RAY_DATA_AUTOSCALING_REQUEST_EXPIRE_TIME_S at import)
    "reservation_expiry_s": (
        "ray.data._internal.cluster_autoscaler.rate_based_cluster_autoscaler",
        "RateBasedClusterAutoscaler",
        "AUTOSCALING_REQUEST_EXPIRE_TIME_S",
    ),
    "reservation_expiry_s_v2": (
        "ray.data._internal.cluster_autoscaler.default_cluster_autoscaler_v2",
        "DefaultClusterAutoscalerV2",
        "AUTOSCALING_REQUEST_EXPIRE_TIME_S",
    ),
    # a Ray Train run asks the same coordinator for its workers' resources (ahead of datasets);
    # read at each renewal, in the run's controller actor
    "train_reservation_expiry_s": (
        "ray.train.v2._internal.execution.scaling_policy.autoscaling_coordinator_client",
        None,
        "AUTOSCALING_REQUESTS_EXPIRE_TIME_S",
    ),
}
_EXPIRY_KEYWORD = "autoscaling_request_expire_time_s"


class PromptWait:
    """``ray`` as Ray Data's scheduling loop sees it, with a ``wait`` that returns at new output.

    The loop calls ``ray.wait(tasks, num_returns=len(tasks), timeout=...)``, which sleeps the
    whole timeout unless every running task has output waiting. This ``wait`` returns as soon as
    a task has output (or has ended) that it had not at this thread's previous return; output
    the loop left unread (held back by backpressure) does not wake it again, so the loop neither
    waits for the slowest task nor spins. A stream's state is its next object's id, so output
    the loop took and new output behind it count as new. Any other call passes through.
    Everything else is Ray's own module.
    """

    def __init__(self, ray_module: ModuleType) -> None:
        self._ray = ray_module
        self._seen = threading.local()  # per executor: each runs its loop in its own thread

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ray, name)

    def wait(
        self, refs: list[Any], *, num_returns: int = 1, timeout: float | None = None, fetch_local: bool = True
    ) -> tuple[list[Any], list[Any]]:
        """``ray.wait``; the scheduling loop's all-tasks wait returns at the first new output."""
        wait = self._ray.wait
        if not refs or num_returns != len(refs) or not timeout:
            return wait(refs, num_returns=num_returns, timeout=timeout, fetch_local=fetch_local)
        ready, pending = wait(refs, num_returns=len(refs), timeout=0, fetch_local=fetch_local)
        seen = getattr(self._seen, "ready", set())
        if all(_state(r) in seen for r in ready):  # nothing new yet: sleep until something is
            if pending:
                got, _ = wait(pending, num_returns=1, timeout=timeout, fetch_local=fetch_local)
                if got:
                    ready, pending = wait(refs, num_returns=len(refs), timeout=0, fetch_local=fetch_local)
            else:
                time.sleep(timeout)  # every task's output is held back: only the consumer frees room
        self._seen.ready = {_state(r) for r in ready}
        return ready, pending


def _state(ref: Any) -> Any:
    """Where a ready task's output stands: a stream's next object id (unique to its task), else the ref."""
    head = getattr(ref, "_get_next_object_id_binary", None)
    try:
        return head() if head is not None else ref
    except Exception:  # a stream Ray can no longer peek (its task failed): the loop must see it
        return object()  # never seen before, so the wait returns and the loop handles the task


def _prompt_wait_on(module: ModuleType) -> bool:
    return isinstance(getattr(module, "ray", None), PromptWait)


def _set_prompt_wait(module: ModuleType, on: bool) -> None:
    """Give the loop's module :class:`PromptWait` in place of ``ray`` (``on``), or Ray back."""
    ray_module = module.ray._ray if _prompt_wait_on(module) else module.ray
    module.ray = PromptWait(ray_module) if on else ray_module


def _value(values: dict[str, Any], name: str) -> Any:
    """The value of target ``name`` (the V2 autoscaler's expiry is the same setting)."""
    return values[name.removesuffix("_v2")]


def _set_values(module: ModuleType, values: dict[str, Any]) -> None:
    """Set the values that belong to ``module`` (one of Ray Data's, freshly imported or not)."""
    for name, (mod, cls, attr) in _TARGETS.items():
        if mod == module.__name__:
            owner = _owner(module, cls)
            setattr(owner, attr, _value(values, name))
            keywords = getattr(getattr(owner, "__init__", None), "__kwdefaults__", None) or {}
            if _EXPIRY_KEYWORD in keywords:  # the rate-based autoscaler: read as each __init__'s default
                keywords[_EXPIRY_KEYWORD] = _value(values, name)
    if module.__name__ == _LOOP_MODULE:
        _set_prompt_wait(module, bool(values["prompt_wait"]))


def _owner(module: ModuleType, cls: str | None) -> object:
    """What holds the attribute: the module itself or one of its classes."""
    return getattr(module, cls) if cls else module


def _holder(module: str, cls: str | None) -> object:
    return _owner(importlib.import_module(module), cls)


def current() -> dict[str, Any]:
    """Ray Data's current settings, by our names (the timings in seconds)."""
    values: dict[str, Any] = {name: getattr(_holder(m, c), a) for name, (m, c, a) in _TARGETS.items()}
    del values["reservation_expiry_s_v2"]  # the same setting; the default autoscaler's is the one read
    rate_based = _holder(*_TARGETS["reservation_expiry_s"][:2])
    values["reservation_expiry_s"] = rate_based.__init__.__kwdefaults__[_EXPIRY_KEYWORD]
    loop = importlib.import_module(_LOOP_MODULE)
    if not hasattr(loop, "ray"):
        raise AttributeError(f"{_LOOP_MODULE} no longer uses `ray` as a module name")
    values["prompt_wait"] = _prompt_wait_on(loop)
    return values


def apply(
    wait_s: float = WAIT_S,
    limits_refresh_s: float = LIMITS_REFRESH_S,
    metadata_on_thread: bool = METADATA_ON_THREAD,
    prompt_wait: bool = PROMPT_WAIT,
    reservation_expiry_s: float = RESERVATION_EXPIRY_S,
    train_reservation_expiry_s: float = TRAIN_RESERVATION_EXPIRY_S,
) -> dict[str, Any] | None:
    """Set the executor's scheduler settings in this process.

    Args:
        wait_s: longest ``ray.wait`` of the scheduling loop between dispatches.
        limits_refresh_s: how often the executor re-reads the cluster's resources.
        metadata_on_thread: fetch output blocks' metadata on a thread of its own (Ray's default),
            which also marks a task done there, unseen by the loop's wait (it then noticed a
            free CPU only at the end of its timeout); else in the loop, as it reads the output.
        prompt_wait: the loop's wait returns at the first new task output (:class:`PromptWait`)
            instead of waiting ``wait_s`` for all running tasks.
        reservation_expiry_s: how long a dataset's share of the cluster outlives its last renewal
            (datasets executing in this process; a dead one's share lapses after it).
        train_reservation_expiry_s: the same for a Ray Train run's workers (its controller).

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
    values = {
        "wait_s": wait_s,
        "limits_refresh_s": limits_refresh_s,
        "metadata_on_thread": metadata_on_thread,
        "prompt_wait": prompt_wait,
        "reservation_expiry_s": reservation_expiry_s,
        "train_reservation_expiry_s": train_reservation_expiry_s,
    }
    for module in {m for m, _, _ in _TARGETS.values()}:
        _set_values(importlib.import_module(module), values)
    return before


class _SetOnImport(importlib.abc.MetaPathFinder):
    """Sets our values in Ray Data's modules right after they are first imported.

    It finds nothing itself: for a watched module it asks the finders after it for the spec and
    wraps that spec's loader (a fresh loader per module) so the values are set once the module
    has run; it removes itself when every watched module has been seen.
    """

    def __init__(self, values: dict[str, Any]) -> None:
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
            _set_values(module, values)

        loader.exec_module = exec_module
        return spec


def apply_on_import(**settings: Any) -> None:
    """:func:`apply` now if Ray Data's modules are loaded, else as soon as the process loads them.

    The job's ``worker_process_setup_hook``: cheap in the many worker processes that never use Ray
    Data. ``settings``: :func:`apply`'s arguments (its defaults where left out).
    """
    values = {**OURS, **settings}
    loaded = [m for m, _, _ in _TARGETS.values() if m in sys.modules]
    if loaded:
        apply(**values)
        return
    if not any(isinstance(f, _SetOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _SetOnImport(values))
