"""Ray Tune searches over pretraining settings (temperatures, K, baselines), scored by kNN top-1.

    python pipelines/tune.py search=cacr_temperatures
    python pipelines/tune.py search=cacr_k tune.max_concurrent_trials=2
    python pipelines/tune.py search=baselines 'search.overrides=["dataset.root=/data/cifar10-shards"]'

Every trial is a full pretraining run (a TorchTrainer inside a Tune function trainable), scored
by kNN top-1 after each epoch, stopped early by ASHA. Re-running the same command (same
``tune.name``) continues the search.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.config.command_line import run_hydra
from pipelines.core.config_schema import register
from pipelines.search.run import main_with_errors

register()  # the config groups' typed schemas, before Hydra composes


@hydra.main(version_base="1.3", config_path="../configs", config_name="tune")
def main(cfg: DictConfig) -> None:
    """Resolve the config to a plain dict and hand off to the search driver."""
    sys.exit(main_with_errors(OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    run_hydra(main)
