"""Where a worker starts: the newest complete checkpoint, and the trail a restart leaves behind.

``resumes.jsonl`` gets a line per restore (which checkpoint, at which step, found how);
``workers.jsonl`` a line per worker start (rank, PID, node: whom to look at, or to kill);
``placement_groups.txt`` the worker group's placement group, which a Tune trial releases when it ends.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch.distributed as dist

from pipelines.core import checkpoints as ckpt
from pipelines.core.run_files import PLACEMENT_GROUPS, RESUMES, WORKERS
from pipelines.core.run_log import say
from pipelines.training.pretrainer import Pretrainer

OLDER_BY_RAY = " (found in storage: Ray Train handed back an older one or none)"


def _append_line(run_dir: str, name: str, line: dict[str, Any] | str) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)  # URI storage: a local mirror per node
    with Path(run_dir, name).open("a") as f:
        f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def choose_checkpoint(trainer: Pretrainer, train_api: Any) -> tuple[Any, Any]:
    """The checkpoint to resume from, and the one Ray handed back (``None`` when there is none).

    Ray Train polls its workers every 2 s, so a checkpoint reported just before a hard crash can
    be missing from what it hands back although its files are in storage. Rank 0 looks there and
    every rank takes its choice.
    """
    run = trainer.run
    given = train_api.get_checkpoint()
    choice: list[str | None] = [None]
    if trainer.rank == 0:
        try:
            found = ckpt.newest_complete(run["storage"], run["name"])
        except (OSError, ValueError) as err:  # storage unreadable now: take what Ray handed back
            say(f"WARNING: could not look for newer checkpoints in storage ({err})")
            found = None
        m = ckpt.NAME.match(Path(given.path).name) if given is not None else None
        given_at = (int(m[2]), int(m[1])) if m else (-1, -1)
        if found is not None and (found.step, found.epoch) > given_at:
            choice[0] = found.uri
    if trainer.world > 1:
        dist.broadcast_object_list(choice, src=0)
    return (train_api.Checkpoint(choice[0]) if choice[0] is not None else given), given


def restore(trainer: Pretrainer, train_api: Any) -> str | None:
    """Load the chosen checkpoint into ``trainer`` and record it; returns its path (``None``: fresh start)."""
    restored, given = choose_checkpoint(trainer, train_api)
    if restored is None:
        return None
    with restored.as_directory() as d:
        trainer.restore(ckpt.read_checkpoint(d, map_location=trainer.device))
    if trainer.rank == 0:
        found_how = "" if restored is given else OLDER_BY_RAY
        say(f"resumed from {restored.path}: epoch {trainer.epoch}, step {trainer.step}{found_how}")
        line = {
            "time": time.time(),
            "checkpoint": restored.path,
            "epoch": trainer.epoch,
            "step": trainer.step,
            "source": "ray" if restored is given else "storage",
            "ray_checkpoint": given.path if given is not None else None,
        }
        _append_line(trainer.run["dir"], RESUMES, line)
    return restored.path


def record_process(trainer: Pretrainer) -> None:
    """Append this worker's rank, PID and node to ``workers.jsonl``."""
    import ray

    line = {
        "time": time.time(),
        "rank": trainer.rank,
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "host": socket.gethostname(),
        "step": trainer.step,
    }
    _append_line(trainer.run["dir"], WORKERS, line)


def record_placement_group(run_dir: str) -> None:
    """Append the id of the worker group's placement group to ``placement_groups.txt``.

    Ray Train leaves the worker group's placement group behind when its owner (a Tune trial)
    finishes or is stopped by ASHA; the trial's driver releases the ones listed here.
    """
    import ray.util

    group = ray.util.get_current_placement_group()
    if group is not None:
        _append_line(run_dir, PLACEMENT_GROUPS, group.id.hex())
