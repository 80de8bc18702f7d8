"""The end-of-run evaluation on rank 0: kNN and a linear probe of the pretrained encoder.

The same network at random initialisation, with its BatchNorm statistics recomputed on the bank
images, is judged next to it: the fair baseline the gain is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from pipelines.evaluation.features import recompute_batchnorm
from pipelines.evaluation.judge import BatchCache, Judge
from pipelines.evaluation.protocols import from_config
from pipelines.models.build import build_framework
from pipelines.training.pretrainer import Pretrainer

STREAM_BATCH = 256  # images per batch of the bank / eval streams


@contextmanager
def node_threads(workers_here: int) -> Iterator[int]:
    """Rank 0 judging alone: torch takes the threads of every training worker on its node.

    The kNN monitor and the final evaluation run on rank 0 while the node's other workers wait
    (a gloo barrier, which sleeps) or have finished, so their CPU would idle; the node keeps the
    thread count it trains with. The previous count is restored on the way out.

    Args:
        workers_here: training workers on this node (Ray Train's local world size).

    Yields:
        The thread count in use inside the block.
    """
    before = torch.get_num_threads()
    inside = before * max(1, int(workers_here))
    torch.set_num_threads(inside)
    try:
        yield inside
    finally:
        torch.set_num_threads(before)


def open_judge(trainer: Pretrainer, train_api: Any) -> Judge:
    """The evaluator over the run's ``bank`` / ``eval`` streams, cached in memory up to ``eval.cache_mb``.

    Args:
        trainer: this worker's state (config, run facts, device, normalisation).
        train_api: the ``ray.train`` module (its dataset shards).
    """
    ev, run = trainer.cfg["eval"], trainer.run

    def open_stream(name: str) -> Any:
        shard = train_api.get_dataset_shard(name)
        return shard.iter_torch_batches(batch_size=STREAM_BATCH, prefetch_batches=1)

    return Judge(
        BatchCache(open_stream, int(ev["cache_mb"]) * 2**20),
        int(run["num_classes"]),
        trainer.mean,
        trainer.std,
        trainer.device,
        list(run.get("train_counts") or [0] * int(run["num_classes"])),
        ev,
        seed=trainer.seed,
    )


def final_evaluation(
    trainer: Pretrainer,
    judge: Judge,
    checkpoint: str | None,
    data: dict[str, Any],
    features: tuple[Tensor, ...] | None = None,
) -> dict[str, Any]:
    """Judge the pretrained backbone and the same network at random init (BN recomputed).

    The probe follows ``eval.protocol`` on cached centre-crop features (quick and deterministic);
    ``pipelines/linear_probe.py`` runs a protocol in full, augmentation included.

    Args:
        trainer: rank 0's state after the last epoch.
        judge: from :func:`open_judge`.
        checkpoint: the last checkpoint written (recorded in the results).
        data: the bad-image monitor's snapshot (recorded in the results).
        features: the pretrained backbone's :meth:`Judge.features`, when the last epoch's kNN
            monitor computed them with these same weights.

    Returns:
        The run's results (``results.json``).
    """
    t0, cfg, run = time.perf_counter(), trainer.cfg, trainer.run
    ev = cfg["eval"]
    protocol = from_config(ev["protocol"]).cached() if ev["final_linear_probe"] else None
    results: dict[str, Any] = {
        "pretrained": judge.judge(trainer.framework.backbone, protocol, feats=features)
    }
    if ev["random_init_baseline"]:
        torch.manual_seed(trainer.seed)
        fresh = build_framework(cfg, seed=trainer.seed).backbone.to(trainer.device)
        used = recompute_batchnorm(fresh, judge.batches("bank"), trainer.mean, trainer.std, trainer.device)
        results["random_init"] = {**judge.judge(fresh, protocol), "batchnorm_images": used}
    dataset = cfg["dataset"]
    where = {
        "root": str(dataset["root"]),
        "train_split": dataset["train_split"],
        "other_dataset": False,
        "eval_split": dataset["eval_split"],
        "classes": len(run.get("classes") or []),
    }
    for judged in results.values():
        judged["judged_on"] = where
    obj = cfg["objective"]
    results.update(
        objective=f"{obj['name']} (K={obj['K']})",
        epochs=trainer.epoch,
        steps=trainer.step,
        evaluation_seconds=round(time.perf_counter() - t0, 1),  # the final evaluation alone
        checkpoint=checkpoint,
        data=data,
        classes=list(run.get("classes") or []),
        train_counts=list(run.get("train_counts") or []),
    )
    return results
