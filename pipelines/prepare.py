"""Convert a dataset into Parquet shards with a manifest.

    python pipelines/prepare.py dataset=<name> dataset.root=<raw root> out=<shard dir or URI>

Runs on Ray (a local cluster, or ``$RAY_ADDRESS`` / ``ray job submit``), resumes where an
interrupted run stopped, and lists every bad file in ``<out>/manifest.json``.
"""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig, OmegaConf


@hydra.main(version_base="1.3", config_path="../configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    """Check the config, then hand off to :func:`pipelines.data.prepare.prepare_dataset`."""
    from pipelines.data.prepare import prepare_dataset
    from pipelines.data.shuffle_writer import ShuffleSettings
    from pipelines.data.sources import open_source
    from pipelines.ray_session import connect

    if not cfg.dataset.root:
        sys.exit(f"dataset.root is not set: add dataset.root=<path or URI of the {cfg.dataset.name} files>")
    if not cfg.out:
        sys.exit("out is not set: add out=<folder or URI for the shards>")
    options = OmegaConf.to_container(cfg.dataset.options, resolve=True) or {}
    options = {k: v for k, v in options.items() if v is not None}
    try:
        open_source(cfg.dataset.name, str(cfg.dataset.root), **options)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
    try:
        shuffle = ShuffleSettings.from_config(OmegaConf.to_container(cfg.shuffle, resolve=True))
    except ValueError as err:
        sys.exit(f"error: {err}")
    connect(cfg.ray.address)
    splits = list(cfg.splits) if cfg.splits else None
    prepare_dataset(cfg.dataset.name, str(cfg.dataset.root), str(cfg.out), splits=splits,
                    options=options, max_pixels=int(cfg.dataset.max_pixels), shuffle=shuffle)


if __name__ == "__main__":
    main()
