"""The paper's comparison tables as one command: presets x seeds, one Tune grid, one table.

    python pipelines/study.py study=small_scale_methods_demo      # bundled sample, 17.5 min on 2 cores
    python pipelines/study.py study=small_scale_methods 'study.overrides=["dataset.root=<cifar10 shards>"]'
    python pipelines/study.py study=k_ablation study.seeds=[0,1]

Writes ``study.md``, ``study.csv`` and ``study.png`` (mean ± std over seeds per method and
dataset) into ``<tune.storage_path>/<study name>/``; re-running the same command resumes.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.config.command_line import run_hydra
from pipelines.core.config_schema import register
from pipelines.studies.run import main_with_errors

register()  # the config groups' typed schemas, before Hydra composes


@hydra.main(version_base="1.3", config_path="../configs", config_name="study")
def main(cfg: DictConfig) -> None:
    """Resolve the config to a plain dict and hand off to the study driver."""
    sys.exit(main_with_errors(OmegaConf.to_container(cfg, resolve=True)))


if __name__ == "__main__":
    run_hydra(main)
