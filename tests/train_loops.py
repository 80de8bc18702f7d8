"""Train-loop functions for Ray Train tests (importable by Ray's worker processes)."""

from __future__ import annotations

import numpy as np


def count_rows(config: dict) -> dict:
    """Stream this worker's share of ``train`` once and return its label histogram."""
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    hist = np.zeros(config["num_classes"], dtype=np.int64)
    shapes = set()
    for batch in shard.iter_batches(batch_size=64, batch_format="numpy"):
        hist += np.bincount(batch["label"], minlength=config["num_classes"])
        shapes.add(batch["views"].shape[1:])
    return {"rank": ray.train.get_context().get_world_rank(), "hist": hist.tolist(), "shapes": sorted(shapes)}
