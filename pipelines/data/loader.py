"""Ray Data pipelines that feed training: shards -> guarded decode -> imbalance -> K + 1 views.

The read tasks themselves (read, decode, crop) are in :mod:`pipelines.data.read_tasks`.

``training_datasets`` returns the datasets and the ``DataConfig`` to hand to a ``TorchTrainer``:
the ``train`` dataset is split across workers (each streams its own part through
``ray.train.get_dataset_shard("train")``; a single worker reads it whole), the ``eval`` dataset
is not split.

Rows leave the pipeline as ``{"views": uint8 [B, V, 3, S, S], "label": int64 [B]}`` (plus
``"local_views"`` for MoCo-v3 local crops); photometric augmentation and normalisation run on
the training device (:class:`pipelines.data.augment.Photometric`).

Bad images met while training are dropped and reported to a :class:`~pipelines.data.monitor.DataMonitor` actor
(named per run), which also holds the current epoch so that crops are seeded by (seed, epoch, batch).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.data import imbalance, order, resilience
from pipelines.data.read_tasks import ReadPlan, stream
from pipelines.data.recipes import ViewRecipe, eval_view
from pipelines.data.shard_index import index_shards, training_rows, warn_if_unshuffled, with_rows
from pipelines.data.sources import Source, open_source

PARQUET_SOURCES = ("shards", "cifar10_jpeg")


@dataclass
class TrainingData:
    """What :func:`training_datasets` builds.

    Attributes:
        datasets: ``{"train": ..., "eval": ...}`` Ray Datasets.
        data_config: the ``ray.train.DataConfig`` (``train`` split across workers only).
        classes: class names.
        train_counts: realised per-class counts of the training set (after imbalance; before
            ``max_train_images``).
        train_size: images per training epoch (``max_train_images`` applied).
        unreadable: shards left out because they could not be opened, with the reason.
    """

    datasets: dict[str, Any]
    data_config: Any
    classes: list[str]
    train_counts: list[int]
    unreadable: list[dict[str, str]] = field(default_factory=list)
    train_size: int = 0


def open_training_source(dataset: dict[str, Any], group: str = "dataset") -> Source:
    """Open the shards a run trains from and check its splits, without Ray (before a cluster starts).

    Args:
        dataset: the ``dataset`` config group as a plain dict.
        group: the config group it came from, for the keys errors name (``eval_dataset`` in a probe).

    Raises:
        ValueError: for a dataset read for training only through shards, a split the shards lack
            (naming the key to set), a ``num_classes`` the shards do not have, or WebDataset shards
            (converted once by ``prepare``).
        FileNotFoundError: when ``dataset.root`` holds no shards.
    """
    name = dataset["name"]
    if name not in PARQUET_SOURCES:
        raise ValueError(
            f"dataset {name!r} is read for training through shards: run `python pipelines/prepare.py "
            f"dataset={name} dataset.root=<raw> out=<dir>` once, then train with dataset=shards "
            f"dataset.root=<dir>"
        )
    source = open_source(name, str(dataset["root"]))
    for key in ("train_split", "eval_split"):  # name the key to change, not only the split
        source.check_split(dataset[key], key=f"{group}.{key}")
    declared, found = dataset.get("num_classes"), len(source.classes())
    if declared is not None and int(declared) != found:  # a preset's dataset, other shards
        raise ValueError(
            f"{group}.num_classes={declared} but the shards in {dataset['root']} hold {found} classes: "
            f"point {group}.root at the {declared}-class shards this setting expects, or set "
            f"{group}.num_classes=null to train on the shards' {found} classes"
        )
    if any(str(c.args[0]).endswith(".tar") for c in source.chunks(dataset["train_split"])):
        raise ValueError(
            f"{dataset['root']} holds WebDataset shards; convert them once with `python pipelines/prepare.py "
            "dataset=shards dataset.root=<them> out=<dir>` and train from <dir>"
        )
    return source


def training_datasets(
    dataset: dict[str, Any],
    recipes: list[ViewRecipe],
    eval_size: int,
    seed: int = 0,
    run: str | None = None,
    bank_size: int | None = None,
    whole_bank: bool = False,
    eval_crop: float = 1.0,
    workers: int = 2,
    task_cpus: float = 1.0,
    source: Source | None = None,
) -> TrainingData:
    """Build the training and evaluation datasets from a dataset config.

    The training stream reads its rows in a new order every epoch (seeded by ``seed`` and the
    epoch the run's monitor holds; :mod:`pipelines.data.order`); evaluation streams read in file
    order.

    Args:
        dataset: the ``dataset`` config group as a plain dict (``name``, ``root``, ``train_split``,
            ``eval_split``, ``imbalance``, ``max_bad_fraction``, ``max_pixels``,
            ``max_train_images``, ``mix_row_groups``).
        recipes: the training views' recipes.
        eval_size: side of the single centre view of evaluation images (``eval`` and ``bank``).
        seed: the run's seed.
        run: the run name (enables the :class:`DataMonitor` actor); ``None`` in tests without one.
        bank_size: when set, also build ``bank``: a seeded class-stratified sample of
            ``bank_size`` images of the (full, balanced) train split as single centre views, for
            the kNN monitor and the final probe; not split.
        whole_bank: build ``bank`` from the whole train split (the standalone linear probe).
        eval_crop: the centre view's share of the resized shorter side
            (:func:`~pipelines.data.recipes.eval_view`; a run's is
            :func:`~pipelines.data.recipes.eval_crop_for`); 1: the centre square at ``eval_size``.
        workers: the Train workers that read ``train``: with more than one it is split between
            them (each streams its own part through Ray's split coordinator actor); one worker
            reads it whole in its own process, without that actor.
        task_cpus: CPUs each read task reserves (:func:`~pipelines.data.read_tasks.stream`).
        source: what :func:`open_training_source` returned for ``dataset`` (opened and checked
            here when not given).

    Raises:
        ValueError, FileNotFoundError: as :func:`open_training_source`, or when no training shard
            can be read.
    """
    import ray.data
    from ray.train import DataConfig

    source = source or open_training_source(dataset)
    warn_if_unshuffled(source, dataset["train_split"])
    if dataset["train_split"] == dataset["eval_split"]:
        print(
            f"WARNING: dataset.eval_split is the training split {dataset['eval_split']!r}: kNN and linear "
            "accuracies will be measured on images the encoder trained on. For a held-out split, "
            "prepare the raw data again with holdout.fraction=0.02 (docs/data.md) and set "
            "dataset.eval_split=val",
            flush=True,
        )
    context = resilience.configure()  # before the datasets exist: each keeps the context it was made in
    context.enable_progress_bars = False  # runs print their own progress (a search trial's too)
    classes = source.classes()
    num_classes = len(classes)
    spec = dataset["imbalance"]
    by_key = spec["rule"] != "none"  # the imbalance rule selects in key order
    train_index = index_shards(source, dataset["train_split"], with_keys=by_key)
    eval_index = index_shards(source, dataset["eval_split"])
    if not train_index.items:
        raise FileNotFoundError(f"no readable {dataset['train_split']} shards under {dataset['root']}")
    labels = train_index.labels
    positions, counts = training_rows(labels, num_classes, spec, seed, train_index.keys)
    limit, before_cap = dataset.get("max_train_images"), len(positions)
    if limit and int(limit) < len(positions):  # a fixed, class-stratified subset for every epoch
        groups = order.group_counts(positions, train_index.sizes)  # positions are sorted
        kept = order.training_sample(labels[positions], int(limit), seed, num_classes, groups)
        positions = positions[kept]
    max_pixels = int(dataset["max_pixels"])
    common = dict(seed=seed, num_classes=num_classes, max_pixels=max_pixels)
    size = recipes[0].size
    draft = (int(size / np.sqrt(min(r.scale[0] for r in recipes))),) * 2 if size > 64 else None
    train_plan = ReadPlan(
        with_rows(train_index, positions), int(dataset["mix_row_groups"]), shuffle=True, seed=seed
    )
    centre = [eval_view(eval_size, eval_crop)]  # torchvision's Resize + CenterCrop
    plain = dict(store=source.store, recipes=centre, draft=None, run=None, **common)
    train_args = dict(store=source.store, recipes=recipes, draft=draft, run=run, unlabeled=True, **common)
    datasets = {
        "train": stream(train_plan, train_args, task_cpus),
        "eval": stream(ReadPlan(eval_index.items), plain, task_cpus),
    }
    if bank_size or whole_bank:
        bank = np.flatnonzero((labels >= 0) & (labels < num_classes))  # labelled images only
        if not whole_bank and int(bank_size) < len(bank):
            bank = order.stratified_sample(labels, int(bank_size), seed, num_classes, train_index.sizes)
        datasets["bank"] = stream(ReadPlan(with_rows(train_index, bank)), plain, task_cpus)
    stats = imbalance.summary(counts)
    unlabelled = int((labels[positions] < 0).sum())
    stray = int((labels[positions] >= num_classes).sum())
    capped = len(positions) < before_cap
    print(
        f"training set: {len(positions):,} images"
        + (f" ({unlabelled:,} unlabelled)" if unlabelled else "")
        + (f" ({stray:,} labelled beyond the {num_classes} classes: read as bad rows)" if stray else "")
        + (f", a class-stratified sample (dataset.max_train_images) of {before_cap:,}" if capped else "")
        + f", {stats['classes_present']} classes, imbalance ratio "
        f"{imbalance.ratio_text(stats['imbalance_ratio'])}, per class "
        + ("before the sample " if capped else "")
        + f"{stats['per_class']}",
        flush=True,
    )
    ordered = ray.data.ExecutionOptions(preserve_order=True)  # same order for the same seed and epoch
    return TrainingData(
        datasets,
        DataConfig(
            datasets_to_split=["train"] if workers > 1 else [],
            execution_options={k: ordered for k in datasets},
        ),
        classes,
        counts,
        train_index.unreadable + eval_index.unreadable,
        len(positions),
    )
