"""The write-time global shuffle of ``prepare``: a two-stage external shuffle with bounded memory.

Raw datasets arrive grouped by class, so training splits are written in one seeded random order
over the whole split. **Scatter** tasks read and check groups of chunks, give every good row a
uniform key and write each key bucket's rows as small pieces; **gather** tasks (about
``rows_per_shard`` rows each) read consecutive buckets' pieces, permute the rows and write the
shards. A task holds about ``rows_per_shard`` rows, never the dataset; every task leaves a
completion record, so a re-run resumes, and the plan (seed, buckets) fixed by the first run is
kept. docs/data-order.md gives the layout of the pieces, the records and the costs.
"""

from __future__ import annotations

import contextlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.errors import settings_from
from pipelines.core.storage import Store
from pipelines.data.order import rng_for
from pipelines.data.shard_writer import SCHEMA, ChunkRows, counts_record, parquet_bytes, read_chunk
from pipelines.data.sources.base import Chunk, Source

EVAL_SPLITS = ("val", "test", "validation")  # judged in any order: not shuffled
GUESS_ROWS_PER_CHUNK = 1000  # a chunk whose size is unknown (a class folder, a tar) counts as this


@dataclass(frozen=True)
class ShuffleSettings:
    """How ``prepare`` orders the rows of the splits it writes (``shuffle.*`` in ``configs/prepare.yaml``).

    Attributes:
        enabled: shuffle the training splits (all but ``val``/``test``/``validation``).
        seed: the shuffle's seed (written into ``manifest.json``).
        rows_per_shard: the target rows per shuffled shard (and per task).
        chunks_per_task: chunks read by one scatter task; ``None``: about ``rows_per_shard`` rows.
    """

    enabled: bool = True
    seed: int = 0
    rows_per_shard: int = 10_000
    chunks_per_task: int | None = None

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> ShuffleSettings:
        """Settings from the ``shuffle`` config group.

        Raises:
            ValueError: naming an unknown key or a value out of range.
        """
        settings = settings_from(cls, cfg, "shuffle")
        if int(settings.rows_per_shard) < 1:
            raise ValueError(f"shuffle.rows_per_shard={settings.rows_per_shard} must be at least 1")
        if settings.chunks_per_task is not None and int(settings.chunks_per_task) < 1:
            raise ValueError(f"shuffle.chunks_per_task={settings.chunks_per_task} must be 1 or more, or null")
        return settings

    def applies_to(self, split: str) -> bool:
        """Whether ``split`` is written in a shuffled order."""
        return self.enabled and split not in EVAL_SPLITS


@dataclass(frozen=True)
class ShufflePlan:
    """The fixed layout of one split's shuffle: seed, bucket count and chunks per scatter task."""

    seed: int
    buckets: int
    chunks_per_task: int
    rows_per_shard: int = 10_000


def plan_split(chunks: list[Chunk], settings: ShuffleSettings, min_tasks: int = 1) -> ShufflePlan:
    """Size the shuffle of one split from its chunks (their sizes where the source knows them).

    Buckets hold about ``rows_per_shard`` rows; a scatter task reads about as many rows, so the
    pieces written in between number about (rows / rows_per_shard) squared. The automatic
    chunks per task leave at least ``min_tasks`` read tasks where there are that many chunks
    (every CPU of the cluster busy).
    """
    sizes = [c.size if c.size is not None else GUESS_ROWS_PER_CHUNK for c in chunks]
    target = max(1, int(settings.rows_per_shard))
    buckets = max(1, math.ceil(sum(sizes) / target))
    per_task = settings.chunks_per_task or max(1, round(target / max(1.0, sum(sizes) / max(1, len(sizes)))))
    if not settings.chunks_per_task:
        per_task = min(per_task, math.ceil(len(chunks) / max(1, min_tasks)))
    per_task = max(1, min(int(per_task), len(chunks) or 1))
    return ShufflePlan(int(settings.seed), buckets, per_task, target)


def plan_path(split: str) -> str:
    """Where a split's shuffle plan is kept."""
    return f"{split}/_done/shuffle-plan.json"


def load_or_save_plan(store: Store, split: str, plan: ShufflePlan) -> tuple[ShufflePlan, bool]:
    """The plan an earlier, interrupted run fixed for ``split`` (and ``True``), else ``plan`` saved."""
    data = store.read(plan_path(split))
    if data is not None:
        return ShufflePlan(**json.loads(data)), True
    store.write_atomic(json.dumps(asdict(plan)).encode(), plan_path(split))
    return plan, False


def task_groups(chunks: list[Chunk], per_task: int) -> list[list[Chunk]]:
    """Consecutive chunks, ``per_task`` at a time."""
    return [chunks[i : i + per_task] for i in range(0, len(chunks), per_task)]


def task_name(group: list[Chunk]) -> str:
    """A scatter task's file-name-safe id: its first chunk's name (plus how many follow)."""
    return group[0].name if len(group) == 1 else f"{group[0].name}+{len(group) - 1}"


def scatter_done_path(split: str, group: list[Chunk]) -> str:
    """Where a scatter task's completion record goes."""
    return f"{split}/_done/scatter-{task_name(group)}.json"


def piece_path(split: str, bucket: int, task: str) -> str:
    """Where one scatter task's rows of one bucket go."""
    return f"{split}/_scatter/{bucket:05d}/{task}.parquet"


def shard_name(split: str, bucket: int, buckets: int, part: int | None = None) -> str:
    """A shuffled shard's path relative to the output root (``part`` of an oversized bucket)."""
    tail = "" if part is None else f"-{part:03d}"
    return f"{split}/shard-{bucket:05d}{tail}-of-{buckets:05d}.parquet"


def gather_done_path(split: str, bucket: int) -> str:
    """Where a gather task's completion record goes."""
    return f"{split}/_done/shard-{bucket:05d}.json"


def scatter(
    source: Source,
    group: list[Chunk],
    out: Store,
    num_classes: int,
    max_pixels: int,
    plan: ShufflePlan,
) -> dict[str, Any]:
    """Stage 1: read and check ``group``'s chunks and write each bucket's rows as pieces.

    Every good row draws a key ``u`` uniform in [0, 1); its bucket is ``floor(u * buckets)`` and
    ``u`` is kept in the piece (a gather task splits an oversized bucket by it). Rows are
    written out whenever ``rows_per_shard`` of them are held, so a task holds at most that many
    rows whatever the chunks' real sizes.

    Returns:
        The completion record: the counts and bad files of the rows read, and ``pieces``: for
        each non-empty bucket, its pieces as ``[name, rows]``.
    """
    split, name = group[0].split, task_name(group)
    rng = rng_for(plan.seed, "scatter", split, name)
    rows, labels, flushed = ChunkRows(), [], [0]
    pieces: dict[str, list[list[Any]]] = {}

    def flush() -> None:
        if not rows.labels:
            return
        piece, flushed[0] = f"{name}.{flushed[0]}", flushed[0] + 1
        keys = rng.random(len(rows.labels))
        bucket = np.minimum((keys * plan.buckets).astype(np.int64), plan.buckets - 1)
        order = np.argsort(bucket, kind="stable")
        table = rows.table(order).append_column("u", pa.array(keys[order]))
        bucket = bucket[order]
        bounds = np.flatnonzero(np.diff(bucket)) + 1
        for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(bucket)], strict=True):
            b = int(bucket[lo])
            out.write_atomic(parquet_bytes(table.slice(lo, hi - lo)), piece_path(split, b, piece))
            pieces.setdefault(str(b), []).append([piece, int(hi - lo)])
        labels.extend(rows.labels)
        rows.images, rows.labels, rows.keys = [], [], []

    for chunk in group:
        read_chunk(source, chunk, num_classes, max_pixels, rows, spill=flush, spill_at=plan.rows_per_shard)
    flush()
    counts = counts_record(split, name, num_classes, labels, rows.log.bad, rows.skipped)  # all this task read
    done = {**counts, "chunks": [c.name for c in group], "pieces": pieces}
    out.write_atomic(json.dumps(done).encode(), scatter_done_path(split, group))
    return done


def gather_plan(owners: list[list[list[Any]]], rows_per_shard: int) -> list[tuple[list[int], int]]:
    """Gather tasks from the buckets' exact sizes: ``(buckets, parts)`` each.

    Consecutive buckets are taken together until they hold ``rows_per_shard`` rows (the plan's
    guess of the split's size may have been too high, which makes many small buckets); a bucket
    of more than twice ``rows_per_shard`` rows (a guess too low) is a task of its own, written in
    ``parts`` shards. Deterministic, so a re-run finds the same tasks.
    """
    tasks: list[tuple[list[int], int]] = []
    group: list[int] = []
    held = 0
    for b, pieces in enumerate(owners):
        n = sum(int(r) for _, r in pieces)
        if n > 2 * rows_per_shard:
            if group:
                tasks.append((group, 1))
                group, held = [], 0
            tasks.append(([b], math.ceil(n / (2 * rows_per_shard))))
            continue
        group.append(b)
        held += n
        if held >= rows_per_shard:
            tasks.append((group, 1))
            group, held = [], 0
    if group:
        tasks.append((group, 1))
    return tasks


def gather(
    out: Store,
    split: str,
    buckets: list[int],
    pieces: list[list[list[Any]]],
    parts: int,
    plan: ShufflePlan,
) -> dict[str, Any]:
    """Stage 2: the rows of ``buckets`` (their ``pieces``, ``[name, rows]`` each) as shuffled shards.

    One shard for the buckets together, or, for one oversized bucket, ``parts`` shards, each the
    rows of one sub-range of their key ``u``: a task holds at most about ``2 * rows_per_shard``
    rows.
    """
    listed = [(b, piece) for b, found in zip(buckets, pieces, strict=True) for piece, _ in found]
    total = sum(int(n) for found in pieces for _, n in found)
    files = []
    for part in range(parts if total else 0):
        tables = []
        for b, piece in listed:
            with out.fs.open_input_file(out.path(piece_path(split, b, piece))) as f:
                table = pq.read_table(f)
            if parts > 1:
                sub = np.floor((table["u"].to_numpy() * plan.buckets - b) * parts).astype(np.int64)
                table = table.filter(pa.array(np.clip(sub, 0, parts - 1) == part))
            tables.append(table.drop_columns(["u"]))
        table = pa.concat_tables(tables).cast(SCHEMA)
        order = rng_for(plan.seed, "gather", split, buckets[0], part).permutation(table.num_rows)
        file = shard_name(split, buckets[0], plan.buckets, part if parts > 1 else None)
        out.write_atomic(parquet_bytes(table.take(pa.array(order, type=pa.int64()))), file)
        files.append({"file": file, "rows": table.num_rows})
    done = {"split": split, "buckets": buckets, "rows": total, "files": files}
    out.write_atomic(json.dumps(done).encode(), gather_done_path(split, buckets[0]))
    for b, piece in listed:  # no longer needed once the shards and their record exist
        with contextlib.suppress(OSError):
            out.fs.delete_file(out.path(piece_path(split, b, piece)))
    return done


def bucket_pieces(records: list[dict[str, Any]], buckets: int) -> list[list[list[Any]]]:
    """For every bucket, the pieces (``[name, rows]``, in task order) the scatter tasks wrote into it."""
    found: list[list[list[Any]]] = [[] for _ in range(buckets)]
    for record in records:
        for b, pieces in record["pieces"].items():
            found[int(b)].extend(pieces)
    return found
