"""Where a run's data and storage are: absolute paths for workers, shared storage on a cluster."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.core.errors import ConfigError
from pipelines.core.storage import is_uri, on_network_filesystem


def resolve_paths(cfg: dict[str, Any], project_root: Path) -> dict[str, Any]:
    """Make ``dataset.root`` and ``trainer.storage_path`` absolute (workers run elsewhere).

    A relative path is taken from the current folder when it exists there, else from the project
    root (so the bundled sample is found under ``ray job submit`` too). ``~`` is expanded.
    """
    out = {**cfg, "dataset": dict(cfg["dataset"]), "trainer": dict(cfg["trainer"])}
    for group, key in (("dataset", "root"), ("trainer", "storage_path")):
        value = out[group].get(key)
        if not value or is_uri(str(value)):
            continue
        path = Path(os.path.expanduser(str(value)))
        if not path.is_absolute():
            here = Path.cwd() / path
            path = here if here.exists() or key == "storage_path" else project_root / path
        out[group][key] = str(path.resolve())
    return out


def check_shared_storage(trainer: dict[str, Any], alive_nodes: int) -> None:
    """Refuse a local ``trainer.storage_path`` on a cluster of several nodes.

    Each node would keep its own checkpoints, and a restart on another node would find none.

    Raises:
        ConfigError: naming the key and the ways out.
    """
    storage = str(trainer.get("storage_path") or "")
    if alive_nodes <= 1 or is_uri(storage) or trainer.get("storage_shared"):
        return
    if on_network_filesystem(storage):
        return
    raise ConfigError(
        f"trainer.storage_path={storage} is a local folder, but the cluster has {alive_nodes} nodes: "
        "each node would keep its own checkpoints and a restart elsewhere would find none. Use storage "
        "every node shares: trainer.storage_path=s3://<bucket>/<prefix> (or gs://), or an NFS mount "
        "seen at the same path on every node; if this folder is shared already (a network mount this "
        "check cannot see), say so with trainer.storage_shared=true"
    )
