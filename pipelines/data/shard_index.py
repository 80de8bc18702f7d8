"""What the driver learns about a split's shards before the feed starts, and which rows an epoch reads.

:func:`index_shards` opens every shard once (row groups, labels, keys); :func:`training_rows`
applies the imbalance rule and resampling to those labels; :func:`with_rows` turns the chosen
row positions into read-task work items.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from pipelines.data import imbalance, order
from pipelines.data.read_tasks import row_keys
from pipelines.data.sources.shards import Shards, key_column


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


def training_rows(
    labels: np.ndarray, num_classes: int, spec: dict[str, Any], seed: int, keys: np.ndarray | None = None
) -> tuple[np.ndarray, list[int]]:
    """Sorted positions (repeats allowed) of the rows a training epoch reads, and the class counts.

    ``spec`` is the whole ``dataset.imbalance`` group (every key; tests fill theirs with
    ``with_defaults``). Applies the imbalance rule (``spec["rule"]``) and class-balanced resampling
    (``spec["balanced"]``); without either, every row. The rule picks its images over the rows
    sorted by ``keys`` when given, so the images kept do not depend on the order the shards were
    written in (for CIFAR pickles, key order is the original order the paper's code selects in).
    Rows labelled beyond the class list are never counted, selected or resampled; they stay in
    the epoch once, so the reader reports them as bad rows.
    """
    positions = np.arange(len(labels))
    counts = imbalance.class_counts(labels, num_classes)
    stray = np.flatnonzero(labels >= num_classes)
    rule = spec["rule"]
    unlabelled = int((labels < 0).sum())
    if unlabelled and (rule != "none" or spec["balanced"]):
        raise ValueError(
            f"dataset.imbalance needs a labelled split, and this one holds {unlabelled:,} unlabelled "
            "images: set dataset.train_split to a labelled split (e.g. train) or drop dataset.imbalance"
        )
    if rule != "none":
        target = imbalance.target_counts(rule, counts, ratio=spec["ratio"], mu=spec["mu"])
        default_order, default_seed = imbalance.default_order(rule)
        by_key = np.argsort(keys.astype(str), kind="stable") if keys is not None else positions
        kept = imbalance.select(
            labels[by_key],
            target,
            order=spec["order"] or default_order,
            seed=spec["seed"] if spec["seed"] is not None else default_seed,
        )
        positions = np.sort(by_key[np.asarray(kept, dtype=np.int64)])
        counts = imbalance.class_counts(labels[positions], num_classes)
    if spec["balanced"]:
        positions = positions[labels[positions] < num_classes]
        draws = imbalance.balanced_indices(labels[positions], seed=seed)
        positions = np.sort(positions[draws])
        counts = imbalance.class_counts(labels[positions], num_classes)
    if stray.size and (rule != "none" or spec["balanced"]):
        positions = np.sort(np.concatenate([positions, stray]))
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
