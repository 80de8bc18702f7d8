"""Ray Data pipelines that feed training: shards -> guarded decode -> imbalance -> K + 1 views.

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

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.data import imbalance, scheduling
from pipelines.data.decode import DEFAULT_MAX_PIXELS, check_label, decode_image
from pipelines.data.monitor import find_monitor, report_to_monitor
from pipelines.data.recipes import ViewRecipe, seed_for
from pipelines.data.sources import open_source
from pipelines.data.sources.shards import Shards, key_column
from pipelines.data.storage import Store

PARQUET_SOURCES = ("shards", "cifar10_jpeg")

scheduling.apply_on_import()  # in every process that unpickles this pipeline and so may run its executor


def decode_and_view(
    batch: dict[str, np.ndarray],
    recipes: list[ViewRecipe],
    seed: int,
    run: str | None,
    num_classes: int,
    max_pixels: int,
    draft: tuple[int, int] | None,
) -> dict[str, np.ndarray]:
    """``map_batches`` body: decode each row (dropping bad ones), then crop all views at once."""
    from pipelines.data.augment import crop_views  # torch: only the data tasks need it (see recipes.py)

    keys = batch["key"]
    good, labels, bad = [], [], []
    for key, data, label in zip(keys, batch["image"], batch["label"], strict=True):
        pixels, why = decode_image(data, max_pixels=max_pixels, draft=draft)
        why = why or check_label(label, num_classes)
        if why is None:
            good.append(pixels)
            labels.append(int(label))
        else:
            bad.append({"path": str(key), "reason": why})
    epoch = 0
    actor = find_monitor(run) if run is not None else None
    if actor is not None:
        epoch = report_to_monitor(actor, len(good), bad)
    first = str(keys[0]) if len(keys) else ""
    rng = np.random.default_rng(seed_for(seed, epoch, first, len(keys)))
    out = {k: v.numpy() for k, v in crop_views(good, recipes, rng).items()}
    out["label"] = np.asarray(labels, dtype=np.int64)
    return out


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
        labels: the label of every row, in item order.
        keys: every row's key (``None`` unless asked for).
        unreadable: shards that could not be opened, with the reason.
    """

    items: list[dict[str, Any]]
    labels: np.ndarray
    keys: np.ndarray | None
    unreadable: list[dict[str, str]]


def row_keys(table: Any, path: str, group: int) -> np.ndarray:
    """Row keys of a row group: its ``key`` / ``source_path`` column, else ``<file>#<group>:<row>``."""
    col = key_column(table.schema.names)
    if col is not None:
        return np.asarray(table[col].to_pylist(), dtype=object)
    return np.asarray([f"{path}#{group}:{i}" for i in range(table.num_rows)], dtype=object)


def index_shards(source: Shards, split: str, with_keys: bool) -> ShardIndex:
    """Open every shard of ``split`` once: row groups, labels, keys if asked; unreadable ones listed."""
    items, labels, keys, unreadable = [], [], [], []
    for chunk in source.chunks(split):
        path = source.store.path(chunk.args[0])
        try:
            with source.store.fs.open_input_file(path) as f:
                pf = pq.ParquetFile(f)
                columns = ["label"] + [c for c in (key_column(pf.schema_arrow.names),) if c and with_keys]
                for group in range(pf.num_row_groups):
                    table = pf.read_row_group(group, columns=columns)
                    items.append({"file": path, "row_group": group})
                    labels.append(table["label"].to_numpy())
                    if with_keys:
                        keys.append(row_keys(table, path, group))
        except Exception as err:  # an unreadable shard must not stop training
            unreadable.append({"path": path, "reason": f"unreadable shard: {type(err).__name__}: {err}"})
    flat = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    return ShardIndex(items, flat, np.concatenate(keys) if with_keys and keys else None, unreadable)


def read_row_group(store: Store, path: str, row_group: int) -> dict[str, np.ndarray]:
    """``image``, ``label`` and ``key`` of one row group as numpy columns."""
    with store.fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        col = key_column(pf.schema_arrow.names)
        table = pf.read_row_group(row_group, columns=["image", "label"] + ([col] if col else []))
    return {
        "image": np.asarray(table["image"].to_pylist(), dtype=object),
        "label": table["label"].to_numpy(),
        "key": row_keys(table, path, row_group),
    }


BLOCK_BYTES = 64 * 2**20  # views made at once: bounds the decoded photos and crops in a task


def rows_per_block(recipes: list[ViewRecipe]) -> int:
    """How many images' views fit in ``BLOCK_BYTES`` (4,369 at 5 x 32 px; 89 at 5 x 224 px)."""
    return max(1, BLOCK_BYTES // sum(3 * r.size**2 for r in recipes))


def read_decode_view(
    items: dict[str, np.ndarray], store: Store, filters: dict[str, list[Any]], **decode_args: Any
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` body over row-group items: read, filter, decode and crop in one task.

    Reading inside the same task as decoding keeps the image bytes out of the object store,
    which roughly doubles throughput on a small machine compared with a separate read stage.
    Images are decoded and cropped :func:`rows_per_block` at a time and each piece is yielded
    as it is made, so the task never holds a whole row group of decoded photos and crops at
    once. Ray Data 2.60 still joins a task's pieces into one output block (measured: a row
    group of 256 photos left as one 256-row block), so a task's output is its row group's views.
    """
    per_block = rows_per_block(decode_args["recipes"])
    for path, group in zip(items["file"], items["row_group"], strict=True):
        rows = read_row_group(store, str(path), int(group))
        if "keep" in filters:
            rows = keep_rows(rows, filters["keep"])
        if "table" in filters:
            rows = repeat_rows(rows, filters["table"])
        for start in range(0, max(len(rows["label"]), 1), per_block):  # once even when empty: keeps the keys
            yield decode_and_view({k: v[start : start + per_block] for k, v in rows.items()}, **decode_args)


def keep_rows(batch: dict[str, np.ndarray], keep: list[Any]) -> dict[str, np.ndarray]:
    """Keep the rows whose key is in the sorted key array ``keep[0]`` (an object ref)."""
    import ray

    wanted = ray.get(keep[0])
    mask = np.isin(batch["key"].astype(str), wanted, assume_unique=False)
    return {k: v[mask] for k, v in batch.items()}


def repeat_rows(batch: dict[str, np.ndarray], table: list[Any]) -> dict[str, np.ndarray]:
    """Repeat each row as often as class-balanced resampling drew it (``table[0]``, an object ref)."""
    import ray

    keys, repeats = ray.get(table[0])
    pos = np.searchsorted(keys, batch["key"].astype(str))
    pos = np.clip(pos, 0, len(keys) - 1)
    times = np.where(keys[pos] == batch["key"].astype(str), repeats[pos], 0)
    return {k: np.repeat(v, times, axis=0) for k, v in batch.items()}


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

    Args:
        dataset: the ``dataset`` config group as a plain dict (``name``, ``root``, ``train_split``,
            ``eval_split``, ``imbalance``, ``max_bad_fraction``, ``max_pixels``).
        recipes: the training views' recipes.
        eval_size: side of the single centre view of evaluation images.
        seed: the run's seed.
        run: the run name (enables the :class:`DataMonitor` actor); ``None`` in tests without one.
        bank_size: when set, also build ``bank``: the first ``bank_size`` images of the (full,
            balanced) train split as single centre views, for the kNN monitor; not split.
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
    classes = source.classes()
    num_classes = len(classes)
    spec = dataset.get("imbalance") or {}
    rule = spec.get("rule") or "none"
    train_index = index_shards(
        source, dataset["train_split"], with_keys=rule != "none" or spec.get("balanced")
    )
    eval_index = index_shards(source, dataset["eval_split"], with_keys=False)
    if not train_index.items:
        raise FileNotFoundError(f"no readable {dataset['train_split']} shards under {dataset['root']}")
    labels, keys = train_index.labels, train_index.keys
    max_pixels = int(dataset.get("max_pixels") or DEFAULT_MAX_PIXELS)
    common = dict(seed=seed, run=run, num_classes=num_classes, max_pixels=max_pixels)
    size = recipes[0].size
    draft = (int(size / np.sqrt(min(r.scale[0] for r in recipes))),) * 2 if size > 64 else None
    counts = imbalance.class_counts(labels[labels >= 0], num_classes)
    filters: dict[str, Any] = {}
    if rule != "none":
        target = imbalance.target_counts(rule, counts, ratio=spec.get("ratio"), mu=spec.get("mu", 0.5))
        order, default_seed = imbalance.default_order(rule)
        kept = imbalance.select(
            labels,
            target,
            order=spec.get("order") or order,
            seed=spec.get("seed") if spec.get("seed") is not None else default_seed,
        )
        filters["keep"] = [ray.put(np.sort(keys[kept].astype(str)))]
        labels, keys = labels[kept], keys[kept]
        counts = imbalance.class_counts(labels, num_classes)
    if spec.get("balanced"):
        draws = imbalance.balanced_indices(labels, seed=seed)
        filters["table"] = [ray.put(np.unique(keys[draws].astype(str), return_counts=True))]
        counts = imbalance.class_counts(labels[draws], num_classes)
    order = np.random.default_rng(seed).permutation(len(train_index.items))  # row groups, shuffled
    train = ray.data.from_items([train_index.items[i] for i in order]).map_batches(
        read_decode_view,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs=dict(store=source.store, recipes=recipes, draft=draft, filters=filters, **common),
    )
    limit = dataset.get("max_train_images")
    if limit:
        train = train.limit(int(limit))
    centre = [ViewRecipe(eval_size, (1.0, 1.0), ratio=(1.0, 1.0), flip=0.0)]
    plain = dict(store=source.store, recipes=centre, draft=None, filters={}, **{**common, "run": None})
    ev = ray.data.from_items(eval_index.items).map_batches(
        read_decode_view, batch_size=1, batch_format="numpy", fn_kwargs=plain
    )
    datasets = {"train": train, "eval": ev}
    if bank_size or whole_bank:
        bank = ray.data.from_items(train_index.items).map_batches(
            read_decode_view, batch_size=1, batch_format="numpy", fn_kwargs=plain
        )
        datasets["bank"] = bank if whole_bank else bank.limit(int(bank_size))
    stats = imbalance.summary(counts)
    print(
        f"training set: {stats['total']:,} images, {stats['classes_present']} classes, imbalance ratio "
        f"{imbalance.ratio_text(stats['imbalance_ratio'])}, per class {stats['per_class']}",
        flush=True,
    )
    ordered = ray.data.ExecutionOptions(preserve_order=True)  # same order for the same seed
    return TrainingData(
        datasets,
        DataConfig(datasets_to_split=["train"], execution_options={k: ordered for k in datasets}),
        classes,
        counts,
        train_index.unreadable + eval_index.unreadable,
        min(int(sum(counts)), int(limit)) if limit else int(sum(counts)),
    )
