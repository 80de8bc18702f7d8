"""Train-loop functions for Ray Train tests (importable by Ray's worker processes)."""

from __future__ import annotations

import numpy as np

# Ray Data scheduler settings every process of a job should have (pipelines/data/scheduling.py),
# written out here rather than read from that module
SCHEDULER_SETTINGS = {
    "wait_s": 0.05,
    "limits_refresh_s": 0.1,
    "metadata_on_thread": False,
    "prompt_wait": True,
    "reservation_expiry_s": 30,
    "train_reservation_expiry_s": 60,
}


def count_rows(config: dict) -> dict:
    """Stream this worker's share of ``train`` once: its label histogram, view shapes and the Ray
    Data scheduler settings in this process (importing ``scheduling`` does not apply them)."""
    import ray.train

    from pipelines.data import scheduling

    shard = ray.train.get_dataset_shard("train")
    hist = np.zeros(config["num_classes"], dtype=np.int64)
    shapes = set()
    for batch in shard.iter_batches(batch_size=64, batch_format="numpy"):
        hist += np.bincount(batch["label"], minlength=config["num_classes"])
        shapes.add(batch["views"].shape[1:])
    return {
        "rank": ray.train.get_context().get_world_rank(),
        "hist": hist.tolist(),
        "shapes": sorted(shapes),
        "scheduling": scheduling.current(),
    }


def two_steps(config: dict) -> dict:
    """Two optimizer steps of a Pretrainer on this rank's slice of one fixed global batch.

    Returns the rank-averaged losses, the (DDP-averaged) gradients of the online encoder after
    each backward pass, and the MoCo queue at the end (when there is one).
    """
    import torch

    from pipelines.training.pretrainer import Pretrainer

    t = Pretrainer(config["cfg"], config["run"])
    batch = int(config["global_batch"])
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(2, batch, int(config["run"]["num_views"]), 3, 32, 32, generator=gen)
    share = batch // t.world
    steps = []
    for step in range(2):
        mine = x[step, t.rank * share : (t.rank + 1) * share]
        loss, terms, finite = t.forward_backward(mine)
        grads = torch.cat([p.grad.flatten() for p in t.framework.online.parameters()])
        t.optimizer_step()
        steps.append(
            {
                "loss": float(loss),
                "finite": finite,
                "grads": grads.tolist(),
                "terms": {k: float(v) for k, v in terms.items()},
            }
        )
    queue = getattr(t.framework, "queue", None)
    return {"steps": steps, "queue": None if queue is None else queue.tolist(), "world": t.world}


def two_steps_each(config: dict) -> list[dict]:
    """:func:`two_steps` for each of ``config["settings"]`` in turn, in one worker group."""
    return [two_steps(setting) for setting in config["settings"]]
