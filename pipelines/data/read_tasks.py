"""Read tasks of the training feed: read a slot's rows, decode them and make their K + 1 views.

A stream (:func:`stream`) has one input row per read slot; each Ray Data task reads its slot's
row groups (:class:`ReadPlan`, in the epoch's order from :mod:`pipelines.data.order`), decodes
the images (bad ones dropped and reported to the run's monitor) and crops all views at once.
Everything here runs inside Ray Data's worker processes, so torch is imported on first use only.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.storage import Store
from pipelines.data import order, scheduling
from pipelines.data.decode import check_label, decode_image
from pipelines.data.monitor import epoch_of, find_monitor, report_to_monitor
from pipelines.data.recipes import ViewRecipe, seed_for
from pipelines.data.sources.shards import key_column

scheduling.apply_on_import()  # in every process that unpickles this pipeline and so may run its executor


def decode_and_view(
    batch: dict[str, np.ndarray],
    recipes: list[ViewRecipe],
    seed: int,
    monitor: Any,
    num_classes: int,
    max_pixels: int,
    draft: tuple[int, int] | None,
    epoch: int = 0,
    unlabeled: bool = False,
) -> dict[str, np.ndarray]:
    """Decode each row (dropping bad ones, reported to the run's monitor), then crop all views at once.

    Crops are seeded by (seed, epoch, the batch's first key and size). Rows leave with ``views``,
    ``label`` and ``row`` (a stable 63-bit id of the row's key, for checks of what an epoch read).
    With ``unlabeled`` (the pretraining stream), rows labelled :data:`~pipelines.data.decode.UNLABELED`
    are kept; elsewhere (banks, evaluation) such a label counts as bad.
    """
    crop_views = load_crop_views()
    keys = batch["key"]
    good, labels, ids, bad = [], [], [], []
    for key, data, label in zip(keys, batch["image"], batch["label"], strict=True):
        why = check_label(label, num_classes, allow_unlabeled=unlabeled)
        pixels, why = (None, why) if why else decode_image(data, max_pixels=max_pixels, draft=draft)
        if why is None:
            good.append(pixels)
            labels.append(int(label))
            ids.append(row_id(str(key)))
        else:
            bad.append({"path": str(key), "reason": why})
    if monitor is not None:
        report_to_monitor(monitor, len(good), bad)
    first = str(keys[0]) if len(keys) else ""
    rng = np.random.default_rng(seed_for(seed, epoch, first, len(keys)))
    out = {k: v.numpy() for k, v in crop_views(good, recipes, rng).items()}
    out["label"] = np.asarray(labels, dtype=np.int64)
    out["row"] = np.asarray(ids, dtype=np.int64)
    return out


HALF_IMPORTED_EXIT = 75  # exit status of a read task's process whose torch import was cut short


def load_crop_views() -> Any:
    """``crop_views``, importing torch on a read task's first use (see :mod:`pipelines.data.recipes`).

    Ray cancels the running read tasks when a Train run restarts its workers (a lost node, a
    killed worker); a cancel lands as ``KeyboardInterrupt`` wherever the task is, and under
    load a task spends seconds in its first ``import torch``. An import cut short leaves torch
    half-registered in the process, and every later import there fails (``RuntimeError:
    duplicate registrations for ...``, or a partially initialised module: seen in the node-loss
    test under load, where the run spent all its restarts on tasks Ray placed in that one
    process). Such a process ends itself here, so that Ray sees a worker crash and retries the
    task in a fresh process (Ray Data retries system failures without limit) instead of a user
    error that fails the whole dataset. A failing first import in a clean process (a broken
    install) is raised as it is.
    """
    half_imported = "torch" not in sys.modules and any(m.startswith("torch.") for m in sys.modules)
    try:
        from pipelines.data.augment import crop_views
    except KeyboardInterrupt:  # cancelled mid-import: this process can never import torch again
        os._exit(HALF_IMPORTED_EXIT)
    except Exception as err:
        if not half_imported:
            raise
        sys.stderr.write(f"read task: torch was cut short mid-import in this process ({err}); ending it\n")
        sys.stderr.flush()
        os._exit(HALF_IMPORTED_EXIT)
    return crop_views


def row_id(key: str) -> int:
    """A stable 63-bit id of a row key (BLAKE2b), the same in every process."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def row_keys(table: Any, path: str, group: int) -> np.ndarray:
    """Row keys of a row group: its ``key`` / ``source_path`` column, else ``<file>#<group>:<row>``."""
    col = key_column(table.schema.names)
    if col is not None:
        return np.asarray(table[col].to_pylist(), dtype=object)
    return np.asarray([f"{path}#{group}:{i}" for i in range(table.num_rows)], dtype=object)


def read_row_group(store: Store, path: str, row_group: int) -> Any:
    """``image``, ``label`` and ``key`` of one row group as an Arrow table (bytes stay in Arrow)."""
    with store.fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        col = key_column(pf.schema_arrow.names)
        table = pf.read_row_group(row_group, columns=["image", "label"] + ([col] if col else []))
    if col is not None:  # the stored keys stay in Arrow; only missing ones are made here
        keys = table[col].cast(pa.string())
    else:
        keys = pa.array(row_keys(table, path, row_group).tolist(), type=pa.string())
    return pa.table({"image": table["image"], "label": table["label"], "key": keys})


def to_columns(table: Any) -> dict[str, np.ndarray]:
    """An Arrow table of rows as numpy columns (only here do the image bytes become Python objects)."""
    return {
        "image": np.asarray(table["image"].to_pylist(), dtype=object),
        "label": table["label"].to_numpy(),
        "key": np.asarray(table["key"].to_pylist(), dtype=object),
    }


BLOCK_BYTES = 64 * 2**20  # views made at once: bounds the decoded photos and crops in a task
# Ray Data emits a task's output as a block once its buffer passes this size, and slices only at
# 1.5x it: at 3/4 of BLOCK_BYTES every full piece leaves the task as its own block when it is
# made (Ray's default, 128 MiB, joined two or three pieces: a 256-photo row group became one
# block, and the first batch of an epoch waited for the task's whole slot).
OUTPUT_BLOCK_BYTES = 3 * BLOCK_BYTES // 4


def rows_per_block(recipes: list[ViewRecipe]) -> int:
    """How many images' views fit in ``BLOCK_BYTES`` (4,369 at 5 x 32 px; 89 at 5 x 224 px)."""
    return max(1, BLOCK_BYTES // sum(3 * r.size**2 for r in recipes))


@dataclass(frozen=True)
class ReadPlan:
    """What one stream reads: its row groups, which of their rows, and whether the order changes.

    Attributes:
        items: ``{"file", "row_group", "rows"}`` per row group; ``rows`` holds positions within
            the group (repeats allowed: class-balanced resampling) or is ``None`` for all.
        mix: row groups whose rows are mixed and shared out between as many read tasks.
        shuffle: a new order every epoch (seeded by seed and epoch); else file order.
        seed: the run's seed.
    """

    items: list[dict[str, Any]]
    mix: int = 1
    shuffle: bool = False
    seed: int = 0

    @property
    def slots(self) -> int:
        """How many read tasks an epoch has: one per row group."""
        return len(self.items)


def read_item(store: Store, item: dict[str, Any]) -> Any:
    """One item's rows as an Arrow table: its row group, or the chosen ``rows`` of it."""
    table = read_row_group(store, str(item["file"]), int(item["row_group"]))
    return table if item.get("rows") is None else table.take(np.asarray(item["rows"], dtype=np.int64))


def read_slot(store: Store, plan: ReadPlan, slot: int, epoch: int) -> dict[str, np.ndarray]:
    """The rows of one slot in ``epoch`` (:func:`pipelines.data.order.slot_group`).

    The slot's share of its mixed row groups is chosen on the Arrow tables, so only the rows
    this task decodes are copied out as Python bytes.
    """
    if not plan.shuffle:
        return to_columns(read_item(store, plan.items[slot]))
    members, index, parts = order.slot_group(len(plan.items), plan.mix, plan.seed, epoch, slot)
    rows = pa.concat_tables(
        [read_item(store, plan.items[int(i)]) for i in members], promote_options="permissive"
    )
    n = rows.num_rows
    keep = order.mix_order(n, plan.seed, epoch, slot - index)[order.part(n, index, parts)]
    return to_columns(rows.take(np.asarray(keep, dtype=np.int64)))


def read_decode_view(
    slots: dict[str, np.ndarray], store: Store, plan: ReadPlan, run: str | None, **decode_args: Any
) -> Iterator[dict[str, np.ndarray]]:
    """``map_batches`` body over read slots: read, mix, decode and crop in one task.

    Reading inside the same task as decoding keeps the image bytes out of the object store,
    which roughly doubles throughput on a small machine compared with a separate read stage.
    The epoch (for the order and the crops) comes from the run's monitor when there is one.
    Images are decoded and cropped :func:`rows_per_block` at a time and each piece is yielded
    as it is made, so the task never holds a whole slot of decoded photos and crops at
    once; with :data:`OUTPUT_BLOCK_BYTES` each full piece also leaves as its own block.
    """
    monitor = find_monitor(run) if run is not None else None
    epoch = epoch_of(monitor) if monitor is not None else 0
    per_block = rows_per_block(decode_args["recipes"])
    for slot in slots["slot"]:
        rows = read_slot(store, plan, int(slot), epoch)
        for start in range(0, max(len(rows["label"]), 1), per_block):  # once even when empty: keeps the keys
            piece = {k: v[start : start + per_block] for k, v in rows.items()}
            yield decode_and_view(piece, monitor=monitor, epoch=epoch, **decode_args)


def stream(plan: ReadPlan, fn_kwargs: dict[str, Any], task_cpus: float = 1.0) -> Any:
    """The Ray Dataset of a read plan: one input row per slot, read, decoded and cropped in tasks.

    Args:
        plan: what to read.
        fn_kwargs: :func:`read_decode_view`'s arguments besides ``slots`` and ``plan``.
        task_cpus: CPUs each read task reserves (below 1, more tasks run at once than there
            are cores).
    """
    import ray.data

    ds = ray.data.from_items([{"slot": i} for i in range(plan.slots)]).map_batches(
        read_decode_view,
        batch_size=1,
        batch_format="numpy",
        num_cpus=task_cpus,
        fn_kwargs={"plan": plan, **fn_kwargs},
    )
    ds.context.target_max_block_size = OUTPUT_BLOCK_BYTES  # this dataset's own context (a copy)
    return ds
