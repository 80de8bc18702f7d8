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
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipelines.data.decode import DEFAULT_MAX_PIXELS, BadImageLog, check_label, decode_image
from pipelines.data.imbalance import summary
from pipelines.data.sources.base import Chunk, Source
from pipelines.data.storage import Store

SCHEMA = pa.schema([("image", pa.binary()), ("label", pa.int64()), ("key", pa.string())])
MANIFEST = "manifest.json"
UNLABELED = -1


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


def label_problem(label: Any, num_classes: int, allow_unlabeled: bool) -> str | None:
    """Why a label cannot be used, or ``None``."""
    if allow_unlabeled and label == UNLABELED:
        return None
    return check_label(label, num_classes)


def write_chunk(
    source: Source, chunk: Chunk, out: Store, num_classes: int, max_pixels: int = DEFAULT_MAX_PIXELS
) -> dict[str, Any]:
    """Read, check and write one chunk; return its completion record.

    Never raises for bad data: a bad image is left out and listed; a chunk that cannot be read
    to the end keeps the rows read before the error and lists the error.
    """
    allow_unlabeled = chunk.split in ("unlabeled", "train+unlabeled")
    log = BadImageLog(max_bad_fraction=1.0, keep=1_000_000)
    images: list[bytes] = []
    labels: list[int] = []
    keys: list[str] = []
    try:
        for rec in source.read(chunk):
            reason = label_problem(rec["label"], num_classes, allow_unlabeled)
            data = rec["image"]
            if reason is None:
                if rec["pixels"] is not None:
                    data = png_bytes(rec["pixels"])
                else:
                    reason = decode_image(data, max_pixels=max_pixels)[1]
            if reason is not None:
                log.add_bad(rec["key"], reason)
                continue
            images.append(data)
            labels.append(int(rec["label"]))
            keys.append(rec["key"])
    except Exception as err:  # an unreadable file or shard: report it, keep what was read
        log.add_bad(f"{source.root}:{chunk.split}/{chunk.name}", f"unreadable: {type(err).__name__}: {err}")
    table = pa.table({"image": images, "label": labels, "key": keys}, schema=SCHEMA)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="NONE", row_group_size=1000)
    out.write_atomic(buf.getvalue(), shard_path(chunk))
    labels_arr = np.asarray(labels, dtype=np.int64)
    done = {
        "split": chunk.split,
        "chunk": chunk.name,
        "file": shard_path(chunk),
        "rows": len(labels),
        "per_class": np.bincount(labels_arr[labels_arr >= 0], minlength=num_classes).tolist(),
        "unlabeled": int((labels_arr == UNLABELED).sum()),
        "bad_files": log.bad,
    }
    out.write_atomic(json.dumps(done).encode(), done_path(chunk))
    return done


def build_manifest(
    dataset: str, root: str, classes: list[str], splits: list[str], done: list[dict[str, Any]]
) -> dict[str, Any]:
    """Assemble ``manifest.json`` from the chunks' completion records (in chunk order)."""
    manifest: dict[str, Any] = {
        "dataset": dataset,
        "source_root": root,
        "format": "parquet",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "classes": classes,
        "splits": {},
        "bad_files": [],
    }
    for split in splits:
        records = [d for d in done if d["split"] == split]
        per_class = np.sum([d["per_class"] for d in records], axis=0).astype(int).tolist() if records else []
        stats = summary(per_class) if per_class else summary([0] * len(classes))
        manifest["splits"][split] = {
            "rows": sum(d["rows"] for d in records),
            "unlabeled": sum(d["unlabeled"] for d in records),
            "per_class": stats["per_class"],
            "classes_present": stats["classes_present"],
            "imbalance_ratio": stats["imbalance_ratio"],
            "bad_count": sum(len(d["bad_files"]) for d in records),
            "shards": [{"file": d["file"], "rows": d["rows"]} for d in records],
        }
        manifest["bad_files"] += [{"split": split, **b} for d in records for b in d["bad_files"]]
    return manifest
