"""What Ray Train runs in each worker process (``train_loop_per_worker``)."""

from __future__ import annotations

from typing import Any

from pipelines.training.pretrainer import Pretrainer
from pipelines.training.session import Session


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry: ``config = {"cfg": <resolved config>, "run": <derived run facts>}``."""
    import ray.train
    import ray.train.torch

    trainer = Pretrainer(config["cfg"], config["run"], device=ray.train.torch.get_device())
    Session(trainer, ray.train).fit()
