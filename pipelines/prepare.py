"""Convert a dataset into Parquet shards with a manifest.

    python pipelines/prepare.py dataset=<name> dataset.root=<raw root> out=<shard dir or URI>

Runs on Ray (a local cluster, or ``$RAY_ADDRESS`` / ``ray job submit``), resumes where an
interrupted run stopped, and lists every bad file in ``<out>/manifest.json``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from pipelines.config.command_line import run_hydra
from pipelines.core.config_schema import register
from pipelines.core.errors import ConfigError, run_command
from pipelines.core.storage import is_uri
from pipelines.data.prepare import prepare_dataset
from pipelines.data.shuffle_writer import ShuffleSettings
from pipelines.data.sources import open_source
from pipelines.data.sources.holdout import HoldOut, HoldOutSettings
from pipelines.ray_session import connect

register()  # the config groups' typed schemas, before Hydra composes


@hydra.main(version_base="1.3", config_path="../configs", config_name="prepare")
def main(cfg: DictConfig) -> None:
    """Run :func:`prepare` as a command: bad input prints one line and exits 2."""
    input_errors = {ValueError: ("error: ", 2), FileNotFoundError: ("error: ", 2)}
    sys.exit(run_command(lambda: prepare(cfg), input_errors))


def prepare(cfg: DictConfig) -> str:
    """Check the config, then hand off to :func:`pipelines.data.prepare.prepare_dataset`.

    Raises:
        ConfigError: for a missing key.
        ValueError, FileNotFoundError: for input that is not the dataset named (the message says
            which file and what to do).
    """
    if not cfg.dataset.root:
        raise ConfigError(
            f"dataset.root is not set: add dataset.root=<path or URI of the {cfg.dataset.name} files>"
        )
    if not cfg.out:
        raise ConfigError("out is not set: add out=<folder or URI for the shards>")
    root, out = (_expand(str(p)) for p in (cfg.dataset.root, cfg.out))
    if not is_uri(root) and not is_uri(out) and Path(out).resolve().is_relative_to(Path(root).resolve()):
        raise ConfigError(
            f"out={cfg.out} is inside dataset.root={cfg.dataset.root}: the next run would read the shards "
            "as raw data; put out outside the raw dataset's folder"
        )
    options = OmegaConf.to_container(cfg.dataset.options, resolve=True) or {}
    options = {k: v for k, v in options.items() if v is not None}
    source = open_source(cfg.dataset.name, root, **options)  # the layout, before Ray
    shuffle = ShuffleSettings.from_config(OmegaConf.to_container(cfg.shuffle, resolve=True))
    holdout = HoldOutSettings.from_config(OmegaConf.to_container(cfg.holdout, resolve=True))
    if holdout.enabled:
        source = HoldOut(source, holdout)  # checks the split to divide, before Ray starts
    splits = list(cfg.splits) if cfg.splits else None
    for split in splits or []:
        source.check_split(split, key="splits")
    prepare_dataset(
        cfg.dataset.name,
        root,
        out,
        splits=splits,
        options=options,
        max_pixels=int(cfg.dataset.max_pixels),
        shuffle=shuffle,
        holdout=holdout,
        before_ray=lambda: connect(cfg.ray.address),  # after the out folder is claimed: refusals come first
    )
    return f"manifest: {out.rstrip('/')}/manifest.json"


def _expand(path: str) -> str:
    """``~`` expanded in a local path (Hydra passes a quoted ``'~/raw'`` through as it is)."""
    return path if is_uri(path) else os.path.expanduser(path)


if __name__ == "__main__":
    run_hydra(main)
