"""A pretraining run on a three-node Ray cluster on this machine, one worker node lost mid-run.

``python -m tests.helpers.multinode <folder>`` builds the cluster with ``ray.cluster_utils.Cluster`` (a
head with no training resources and two worker nodes that can each hold both Train workers),
checks that a local ``storage_path`` is refused, then runs with ``trainer.storage_shared=true``
(all nodes share this machine's disk) and removes the node of rank 1 once step 5 is logged. The
last line printed is a JSON object of what happened. When the run does not finish, Ray's logs of
the cluster are copied to ``<folder>/ray-logs`` (named in the JSON line) before the cluster goes.
"""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.helpers.runs import jsonl, smoke, step_losses, wait_for

COMMON = [
    "trainer.num_workers=2",
    "+trainer.resources_per_worker.trainer=1",
    "trainer.checkpoint_every_steps=2",
    "trainer.max_failures=3",
    "trainer.log_every_steps=1",
    "eval.knn_every_epochs=0",
    "eval.final_linear_probe=false",
    "eval.random_init_baseline=false",
]


WAIT_S = 900  # for step 5; the test gives the whole scenario 1,200 s


def keep_logs(folder: Path) -> str | None:
    """Copy the cluster's Ray logs (every node's: they share this machine) to ``<folder>/ray-logs``."""
    import ray

    node = getattr(ray._private.worker, "_global_node", None)
    if node is None:
        return None
    target = folder / "ray-logs"
    shutil.copytree(Path(node.get_session_dir_path()) / "logs", target, dirs_exist_ok=True)
    return str(target)


def main(folder: Path) -> dict[str, Any]:
    """Run the scenario; what was refused, removed and resumed, and how the run ended."""
    import ray
    from ray.cluster_utils import Cluster

    from pipelines.core.errors import ConfigError
    from pipelines.training.run import pretrain

    # the driver attaches to the head before the other nodes exist: all nodes share this host's
    # address, and a driver attached to a worker node would go down with it
    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 1, "object_store_memory": 150_000_000, "include_dashboard": False},
    )
    nodes = [cluster.add_node(num_cpus=1, resources={"trainer": 2}, object_store_memory=100_000_000)]
    nodes.append(cluster.add_node(num_cpus=1, resources={"trainer": 2}, object_store_memory=100_000_000))
    cluster.wait_for_nodes()
    assert ray.get_runtime_context().get_node_id() == cluster.head_node.node_id
    seen: dict[str, Any] = {}
    try:
        try:
            pretrain(smoke(folder, "trainer.name=local", *COMMON))
        except ConfigError as err:
            seen["refused"] = str(err)
        run_dir = folder / "multinode"

        def remove() -> None:  # waits as long as the whole scenario may take (slow machines)
            wait_for(lambda: len(step_losses(run_dir)) >= 5 if run_dir.exists() else 0, WAIT_S, "step 5")
            victim = [w for w in jsonl(run_dir / "workers.jsonl") if w["rank"] == 1][-1]["node_id"]
            node = next(n for n in nodes if n.node_id == victim)
            seen.update(removed=victim, removed_time=time.time(), removed_at_step=max(step_losses(run_dir)))
            cluster.remove_node(node, allow_graceful=False)

        thread = threading.Thread(target=remove, daemon=True)
        thread.start()
        try:
            out = pretrain(smoke(folder, "trainer.name=multinode", "trainer.storage_shared=true", *COMMON))
            seen.update(finished=bool(out.results), final_step=out.results.get("steps"))
        except Exception as err:  # reported in the JSON line, for the test's message
            seen.update(finished=False, error=f"{type(err).__name__}: {str(err)[-3000:]}")
        thread.join(10)
        seen.update(resumes=jsonl(run_dir / "resumes.jsonl"), workers=jsonl(run_dir / "workers.jsonl"))
        if not seen.get("finished") or "removed" not in seen:
            seen["ray_logs"] = keep_logs(folder)
    finally:
        ray.shutdown()
        cluster.shutdown()
    return seen


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]))), flush=True)
