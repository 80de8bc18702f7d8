"""Self-supervised pretraining on Ray Train.

    python pipelines/pretrain.py                      # the demo: CACR K=4, bundled CIFAR-10
    python pipelines/pretrain.py experiment=cifar10_cacr_k4 dataset.root=<shards> trainer.num_workers=8 \
        trainer.use_gpu=true
    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/pretrain.py experiment=smoke

The config is checked before Ray starts; re-running the same command (same ``trainer.name``)
resumes the run from its latest complete checkpoint.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.config.command_line import run_hydra
from pipelines.config.paths import resolve_paths
from pipelines.core.config_schema import register
from pipelines.training.run import main_with_errors

PROJECT_ROOT = Path(__file__).resolve().parents[1]


register()  # the config groups' typed schemas, before Hydra composes


@hydra.main(version_base="1.3", config_path="../configs", config_name="pretrain")
def main(cfg: DictConfig) -> None:
    """Resolve the config to a plain dict with absolute paths and hand off to the training driver."""
    plain = resolve_paths(OmegaConf.to_container(cfg, resolve=True), PROJECT_ROOT)
    sys.exit(main_with_errors(plain))


if __name__ == "__main__":
    run_hydra(main)
