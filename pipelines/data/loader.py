"""Ray Data pipelines that feed training: shards -> guarded decode -> imbalance -> K + 1 views.

The read tasks themselves (read, decode, crop) are in :mod:`pipelines.data.read_tasks`.

``training_datasets`` returns the datasets and the ``DataConfig`` to hand to a ``TorchTrainer``:
the ``train`` dataset is split across workers (each streams its own part through
``ray.train.get_dataset_shard("train")``), the ``eval`` dataset is not split.

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
import pyarrow.parquet as pq

from pipelines.data import imbalance, order, resilience
from pipelines.data.decode import DEFAULT_MAX_PIXELS
from pipelines.data.read_tasks import ReadPlan, row_keys, stream
from pipelines.data.recipes import ViewRecipe
from pipelines.data.sources import open_source
from pipelines.data.sources.shards import Shards, key_column

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


@dataclass
class ShardIndex:
    """What the driver learns from one pass over a split's shards.

    Attributes:
        items: one work item per readable row group (``file``, ``row_group``).
        sizes: the rows of each item.
        labels: the label of every row, in item order.
        unreadable: shards that could not be opened, with the reason.
        keys: every row's key (``None`` unless asked for).
    """

    items: list[dict[str, Any]]
    sizes: list[int]
    labels: np.ndarray
    unreadable: list[dict[str, str]]
    keys: np.ndarray | None = None


def index_shards(source: Shards, split: str, with_keys: bool = False) -> ShardIndex:
    """Open every shard of ``split`` once: row groups, labels, keys if asked; unreadable ones listed."""
    items, sizes, labels, keys, unreadable = [], [], [], [], []
    for chunk in source.chunks(split):
        path = source.store.path(chunk.args[0])
        try:
            with source.store.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                columns = ["label"] + [c for c in (key_column(pf.schema_arrow.names),) if c and with_keys]
                for group in range(pf.num_row_groups):
                    table = pf.read_row_group(group, columns=columns)
                    items.append({"file": path, "row_group": group})
                    sizes.append(table.num_rows)
                    labels.append(table["label"].to_numpy())
                    if with_keys:
                        keys.append(row_keys(table, path, group))
        except Exception as err:  # an unreadable shard must not stop training
            unreadable.append({"path": path, "reason": f"unreadable shard: {type(err).__name__}: {err}"})
    flat = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
    return ShardIndex(items, sizes, flat, unreadable, np.concatenate(keys) if with_keys and keys else None)


def training_datasets(
    dataset: dict[str, Any],
    recipes: list[ViewRecipe],
    eval_size: int,
    seed: int = 0,
    run: str | None = None,
    bank_size: int | None = None,
    whole_bank: bool = False,
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
        eval_size: side of the single centre view of evaluation images.
        seed: the run's seed.
        run: the run name (enables the :class:`DataMonitor` actor); ``None`` in tests without one.
        bank_size: when set, also build ``bank``: a seeded class-stratified sample of
            ``bank_size`` images of the (full, balanced) train split as single centre views, for
            the kNN monitor and the final probe; not split.
        whole_bank: build ``bank`` from the whole train split (the standalone linear probe).

    Raises:
        ValueError: for a dataset that is read for training only through shards.
    """
    import ray.data
    from ray.train import DataConfig

    name = dataset["name"]
    if name not in PARQUET_SOURCES:
        raise ValueError(
            f"dataset {name!r} is read for training through shards: run `python pipelines/prepare.py "
            f"dataset={name} dataset.root=<raw> out=<dir>` once, then train with dataset=shards "
            f"dataset.root=<dir>"
        )
    source = open_source(name, str(dataset["root"]))
    if any(str(c.args[0]).endswith(".tar") for c in source.chunks(dataset["train_split"])):
        raise ValueError(
            f"{dataset['root']} holds WebDataset shards; convert them once with `python pipelines/prepare.py "
            "dataset=shards dataset.root=<them> out=<dir>` and train from <dir>"
        )
    warn_if_unshuffled(source, dataset["train_split"])
    resilience.configure()  # before the datasets exist: each keeps the context it was made in
    classes = source.classes()
    num_classes = len(classes)
    spec = dataset.get("imbalance") or {}
    by_key = (spec.get("rule") or "none") != "none"  # the imbalance rule selects in key order
    train_index = index_shards(source, dataset["train_split"], with_keys=by_key)
    eval_index = index_shards(source, dataset["eval_split"])
    if not train_index.items:
        raise FileNotFoundError(f"no readable {dataset['train_split']} shards under {dataset['root']}")
    labels = train_index.labels
    positions, counts = training_rows(labels, num_classes, spec, seed, train_index.keys)
    limit = dataset.get("max_train_images")
    if limit and int(limit) < len(positions):  # a fixed, class-stratified subset for every epoch
        groups = order.group_counts(positions, train_index.sizes)  # positions are sorted
        kept = order.training_sample(labels[positions], int(limit), seed, num_classes, groups)
        positions = positions[kept]
    max_pixels = int(dataset.get("max_pixels") or DEFAULT_MAX_PIXELS)
    common = dict(seed=seed, num_classes=num_classes, max_pixels=max_pixels)
    size = recipes[0].size
    draft = (int(size / np.sqrt(min(r.scale[0] for r in recipes))),) * 2 if size > 64 else None
    train_plan = ReadPlan(
        with_rows(train_index, positions), int(dataset.get("mix_row_groups") or 1), shuffle=True, seed=seed
    )
    centre = [ViewRecipe(eval_size, (1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)]
    plain = dict(store=source.store, recipes=centre, draft=None, run=None, **common)
    train_args = dict(store=source.store, recipes=recipes, draft=draft, run=run, unlabeled=True, **common)
    datasets = {
        "train": stream(train_plan, train_args),
        "eval": stream(ReadPlan(eval_index.items), plain),
    }
    if bank_size or whole_bank:
        bank = np.flatnonzero(labels >= 0)  # unlabelled images are for pretraining only
        if not whole_bank and int(bank_size) < len(bank):
            bank = order.stratified_sample(labels, int(bank_size), seed, num_classes, train_index.sizes)
        datasets["bank"] = stream(ReadPlan(with_rows(train_index, bank)), plain)
    stats = imbalance.summary(counts)
    unlabelled = int((labels[positions] < 0).sum())
    print(
        f"training set: {len(positions):,} images"
        + (f" ({unlabelled:,} unlabelled)" if unlabelled else "")
        + f", {stats['classes_present']} classes, imbalance ratio "
        f"{imbalance.ratio_text(stats['imbalance_ratio'])}, per class {stats['per_class']}",
        flush=True,
    )
    ordered = ray.data.ExecutionOptions(preserve_order=True)  # same order for the same seed and epoch
    return TrainingData(
        datasets,
        DataConfig(datasets_to_split=["train"], execution_options={k: ordered for k in datasets}),
        classes,
        counts,
        train_index.unreadable + eval_index.unreadable,
        len(positions),
    )


def training_rows(
    labels: np.ndarray, num_classes: int, spec: dict[str, Any], seed: int, keys: np.ndarray | None = None
) -> tuple[np.ndarray, list[int]]:
    """Sorted positions (repeats allowed) of the rows a training epoch reads, and the class counts.

    Applies the imbalance rule (``spec["rule"]``) and class-balanced resampling
    (``spec["balanced"]``); without either, every row. The rule picks its images over the rows
    sorted by ``keys`` when given, so the images kept do not depend on the order the shards were
    written in (for CIFAR pickles, key order is the original order the paper's code selects in).
    """
    positions = np.arange(len(labels))
    counts = imbalance.class_counts(labels[labels >= 0], num_classes)
    rule = spec.get("rule") or "none"
    unlabelled = int((labels < 0).sum())
    if unlabelled and (rule != "none" or spec.get("balanced")):
        raise ValueError(
            f"dataset.imbalance needs a labelled split, and this one holds {unlabelled:,} unlabelled "
            "images: set dataset.train_split to a labelled split (e.g. train) or drop dataset.imbalance"
        )
    if rule != "none":
        target = imbalance.target_counts(rule, counts, ratio=spec.get("ratio"), mu=spec.get("mu", 0.5))
        default_order, default_seed = imbalance.default_order(rule)
        by_key = np.argsort(keys.astype(str), kind="stable") if keys is not None else positions
        kept = imbalance.select(
            labels[by_key],
            target,
            order=spec.get("order") or default_order,
            seed=spec.get("seed") if spec.get("seed") is not None else default_seed,
        )
        positions = np.sort(by_key[np.asarray(kept, dtype=np.int64)])
        counts = imbalance.class_counts(labels[positions], num_classes)
    if spec.get("balanced"):
        draws = imbalance.balanced_indices(labels[positions], seed=seed)
        positions = np.sort(positions[draws])
        counts = imbalance.class_counts(labels[positions], num_classes)
    return positions, counts


def with_rows(index: ShardIndex, positions: np.ndarray) -> list[dict[str, Any]]:
    """The index's items restricted to sorted global row ``positions`` (items left empty are dropped)."""
    if len(positions) == len(index.labels) and np.array_equal(positions, np.arange(len(index.labels))):
        return list(index.items)
    per_item = order.rows_per_item(positions, index.sizes)
    return [{**item, "rows": rows} for item, rows in zip(index.items, per_item, strict=True) if len(rows)]


def warn_if_unshuffled(source: Shards, split: str) -> None:
    """One line when shards of ``split`` were written without the write-time shuffle."""
    manifest = getattr(source, "manifest", None)
    if manifest is None:
        return
    info = manifest.get("splits", {}).get(split, {})
    if info.get("order") != "shuffled":
        print(
            f"WARNING: {source.root} was prepared without a shuffle seed (split {split!r} is in source "
            "order, usually grouped by class); each epoch still reads it in a new order, but batches "
            "mix only a few row groups: re-run prepare into a new folder for fully mixed batches",
            flush=True,
        )
