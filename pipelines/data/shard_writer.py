"""Writing a dataset as Parquet shards of encoded images with a manifest (what ``prepare`` does).

Layout under the output folder or URI::

    manifest.json                         classes, per-split counts, shard list, bad files
    <split>/<chunk>.parquet               columns image (bytes), label (int64), key (string)
    <split>/_done/<chunk>.json            written after its shard: the chunk is complete

A chunk whose ``_done`` record exists is never redone, so a re-run after a crash keeps every
finished shard. Every image is decoded once here; bad ones are left out and listed with their
reason. Pixel sources (CIFAR, STL-10) are stored as lossless PNG.
"""

from __future__ import annotations

import datetime
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from PIL import Image

from pipelines.core.storage import Store
from pipelines.data.decode import (
    DEFAULT_MAX_PIXELS,
    UNLABELED,
    UNLABELED_SPLITS,
    BadImageLog,
    check_label,
    decode_image,
)
from pipelines.data.imbalance import summary
from pipelines.data.sources.base import Chunk, Source

SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("key", pa.string())])
MANIFEST = "manifest.json"
# A Parquet row group is the unit one training read task decodes, so its size sets how finely the
# work is shared out: at most ROW_GROUP_ROWS rows (small images: CIFAR's 1,000 PNGs are ~2.5 MB)
# and about ROW_GROUP_BYTES of encoded images (ImageNet-sized JPEGs: ~80 rows), measured in
# docs/benchmarks.md (a 256-photo row group was one 1-second task, and an epoch of a few such
# groups left a core idle while the last ran).
ROW_GROUP_ROWS = 1000
ROW_GROUP_BYTES = 8 * 2**20
MIN_ROW_GROUP_ROWS = 16


def shard_path(chunk: Chunk) -> str:
    """Where a chunk's shard goes, relative to the output root."""
    return f"{chunk.split}/{chunk.name}.parquet"


def done_path(chunk: Chunk) -> str:
    """Where a chunk's completion record goes."""
    return f"{chunk.split}/_done/{chunk.name}.json"


def png_bytes(pixels: np.ndarray) -> bytes:
    """Lossless PNG encoding of an ``[H, W, 3]`` uint8 image."""
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


@dataclass
class ChunkRows:
    """The good rows read from one or more chunks, and the bad files met."""

    images: list[bytes] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    skipped: dict[str, int] = field(default_factory=dict)  # files not taken for images, by extension
    log: BadImageLog = field(default_factory=lambda: BadImageLog(max_bad_fraction=1.0, keep=1_000_000))

    def table(self, order: np.ndarray | None = None) -> pa.Table:
        """The rows as a shard table (in ``order`` when given)."""
        table = pa.table({"image": self.images, "label": self.labels, "key": self.keys}, schema=SCHEMA)
        return table if order is None else table.take(pa.array(order, type=pa.int64()))

    def record(self, split: str, name: str, num_classes: int) -> dict[str, Any]:
        """The counts part of a completion record of these rows (:func:`counts_record`)."""
        return counts_record(split, name, num_classes, self.labels, self.log.bad, self.skipped)


UNREADABLE = "unreadable: "  # the reason's prefix for a file read only up to an error


def counts_record(
    split: str,
    name: str,
    num_classes: int,
    labels: list[int],
    bad_files: list[Any],
    skipped: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The counts part of a completion record: rows, per-class counts, unlabelled rows, bad files.

    ``skipped``: files the source did not take for images, counted by extension.
    """
    array = np.asarray(labels, dtype=np.int64)
    return {
        "split": split,
        "chunk": name,
        "rows": len(array),
        "per_class": np.bincount(array[array >= 0], minlength=num_classes).tolist(),
        "unlabeled": int((array == UNLABELED).sum()),
        "bad_files": bad_files,
        "skipped": dict(skipped or {}),
    }


def read_chunk(
    source: Source,
    chunk: Chunk,
    num_classes: int,
    max_pixels: int,
    rows: ChunkRows | None = None,
    spill: Callable[[], None] | None = None,
    spill_at: int = 0,
) -> ChunkRows:
    """Read and check one chunk's records into ``rows`` (a new :class:`ChunkRows` by default).

    Never raises for bad data: a bad image is left out and listed; a chunk that cannot be read
    to the end keeps the rows read before the error and lists the error. ``spill`` is called
    whenever ``rows`` holds ``spill_at`` good rows (it must write them out and empty ``rows``).
    """
    rows = rows if rows is not None else ChunkRows()
    allow_unlabeled = chunk.split in UNLABELED_SPLITS
    try:
        for rec in source.read(chunk):
            if rec.get("skipped"):
                rows.skipped[rec["skipped"]] = rows.skipped.get(rec["skipped"], 0) + 1
                continue
            reason = rec.get("problem") or check_label(rec["label"], num_classes, allow_unlabeled)
            data = rec["image"]
            if reason is None:
                if rec["pixels"] is not None:
                    data = png_bytes(rec["pixels"])
                else:
                    reason = decode_image(data, max_pixels=max_pixels)[1]
            if reason is not None:
                rows.log.add_bad(rec["key"], reason)
                continue
            rows.images.append(data)
            rows.labels.append(int(rec["label"]))
            rows.keys.append(rec["key"])
            if spill is not None and len(rows.labels) >= spill_at:
                spill()
    except Exception as err:  # an unreadable file or shard: report it, keep what was read
        where = f"{source.root}:{chunk.split}/{chunk.name}"
        rows.log.add_bad(where, f"{UNREADABLE}{type(err).__name__}: {err}")
    return rows


def row_group_rows(table: pa.Table) -> int:
    """Rows per row group for ``table``.

    About :data:`ROW_GROUP_BYTES` of its encoded images, within [:data:`MIN_ROW_GROUP_ROWS`,
    :data:`ROW_GROUP_ROWS`].
    """
    if table.num_rows == 0:
        return ROW_GROUP_ROWS
    per_row = max(1, pc.sum(pc.binary_length(table["image"])).as_py() // table.num_rows)
    return int(min(ROW_GROUP_ROWS, max(MIN_ROW_GROUP_ROWS, ROW_GROUP_BYTES // per_row)))


def parquet_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    """A table as an uncompressed Parquet file (images are compressed already).

    Row groups of ``row_group_size`` rows (default: :func:`row_group_rows`).
    """
    buf = io.BytesIO()
    rows = row_group_size or row_group_rows(table)
    pq.write_table(table, buf, compression="NONE", row_group_size=rows)
    return buf.getvalue()


def write_chunk(
    source: Source, chunk: Chunk, out: Store, num_classes: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """Read, check and write one chunk as its own shard, in source order; return its completion record."""
    rows = read_chunk(source, chunk, num_classes, max_pixels)
    out.write_atomic(parquet_bytes(rows.table()), shard_path(chunk))
    done = {**rows.record(chunk.split, chunk.name, num_classes), "file": shard_path(chunk)}
    out.write_atomic(json.dumps(done).encode(), done_path(chunk))
    return done


def _merged_counts(counts: Any) -> dict[str, int]:
    """``{name: count}`` dicts added up, the largest count first."""
    total: dict[str, int] = {}
    for part in counts:
        for name, n in part.items():
            total[name] = total.get(name, 0) + int(n)
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


def build_manifest(
    dataset: str,
    root: str,
    classes: list[str],
    splits: list[str],
    done: list[dict[str, Any]],
    shuffled: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble ``manifest.json`` from the completion records of the read stage (in chunk order).

    Args:
        dataset: the source's name.
        root: the raw dataset's root.
        classes: class names.
        splits: the splits written.
        done: one record per chunk (or scatter task): rows, per-class counts, bad files, and
            ``file`` for a split written one shard per chunk.
        shuffled: for each shuffled split, ``{"seed", "buckets", "chunks_per_task",
            "rows_per_shard", "shards"}``
            where ``shards`` lists the shuffled shards as ``{"file", "rows"}``.
    """
    shuffled = shuffled or {}
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "source_root": root,
        "format": "parquet",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "classes": classes,
        "splits": {},
        "bad_files": [],
    }
    if shuffled:
        manifest["shuffle"] = {"seed": next(iter(shuffled.values()))["seed"], "splits": sorted(shuffled)}
    for split in splits:
        records = [d for d in done if d["split"] == split]
        per_class = np.sum([d["per_class"] for d in records], axis=0).astype(int).tolist() if records else []
        stats = summary(per_class) if per_class else summary([0] * len(classes))
        info = shuffled.get(split)
        manifest["splits"][split] = {
            "rows": sum(d["rows"] for d in records),
            "unlabeled": sum(d["unlabeled"] for d in records),
            "per_class": stats["per_class"],
            "classes_present": stats["classes_present"],
            "imbalance_ratio": stats["imbalance_ratio"],
            "bad_count": sum(len(d["bad_files"]) for d in records),
            "unreadable_files": sum(
                1 for d in records for b in d["bad_files"] if b["reason"].startswith(UNREADABLE)
            ),
            "skipped_files": _merged_counts(d.get("skipped") or {} for d in records),
            "order": "shuffled" if info else "source",
            "shards": info["shards"] if info else [{"file": d["file"], "rows": d["rows"]} for d in records],
        }
        if info:
            keys = ("seed", "buckets", "chunks_per_task", "rows_per_shard")
            manifest["splits"][split]["shuffle"] = {k: info[k] for k in keys}
        manifest["bad_files"] += [{"split": split, **b} for d in records for b in d["bad_files"]]
    return manifest
