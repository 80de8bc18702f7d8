"""Connecting an entry point to Ray the same way everywhere."""

from __future__ import annotations

import os

from pipelines.data import scheduling

# Run in every worker process of the job before any task or actor: Ray Data's executor runs in
# actors of its own (the split coordinator of a Train run), which never import our modules.
RUNTIME_ENV = {"worker_process_setup_hook": "pipelines.data.scheduling.apply_on_import"}
PREEMPTION_WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def set_preemption_watcher(on: bool) -> None:
    """Whether the next Ray Train ``fit()`` of this process starts Ray Train's PreemptionWatcher.

    Ray Train 2.60 starts that actor per run unless the variable is "0" (its TrainController reads
    the driver's value): it polls for node drains and marks the workers for
    ``ray.train.get_preemption_info``, which nothing here reads (a drained node's workers fail and
    the run restarts from its last checkpoint). A whole process per run, about 2 CPU-seconds of its
    own on 2 cores, and Ray prints an error line about its restarts; runs start it only with
    ``trainer.preemption_watcher=true``.
    """
    os.environ[PREEMPTION_WATCHER_ENV] = "1" if on else "0"


def connect(address: str | None = None) -> str | None:
    """Connect to Ray once: ``address``, else ``$RAY_ADDRESS``, else a new local cluster.

    A plain ``ray.init()`` would attach to any cluster already running on the machine; a run
    without an address gets a cluster of its own instead. ``RAY_AUTH_MODE`` defaults to
    ``disabled`` for such a local cluster so no token file appears as a side effect.

    Returns:
        The dashboard URL when Ray reports one (``None`` when already connected or without one).
    """
    import ray

    if ray.is_initialized():
        return None
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    if starts_local_cluster(address):
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    context = ray.init(address=target, log_to_driver=True, runtime_env=RUNTIME_ENV)

    scheduling.apply()  # the driver too (an unsplit dataset iterated here)
    ray.data.DataContext.get_current().enable_progress_bars = False
    url = getattr(context, "dashboard_url", None)
    return f"http://{url}" if url and "://" not in url else url


def starts_local_cluster(address: str | None = None) -> bool:
    """Whether :func:`connect` with ``address`` starts a cluster of its own (its size is fixed)."""
    return (address or os.environ.get("RAY_ADDRESS") or "local") == "local"


def new_local_cluster_resources(address: str | None = None) -> dict[str, float] | None:
    """The CPUs and GPUs of the cluster :func:`connect` would start here, known before it starts.

    ``None`` when it would not start one (already connected, or an address given).
    """
    import ray

    if ray.is_initialized() or not starts_local_cluster(address):
        return None
    import torch

    try:
        from ray._private.utils import get_num_cpus  # what ray.init counts (cgroup limits included)
    except ImportError:  # moved in another Ray release: the check after the start still holds
        return None
    return {"CPU": float(get_num_cpus()), "GPU": float(torch.cuda.device_count())}


def alive_nodes() -> int:
    """How many nodes of the connected cluster are alive."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))
