"""Converting a source into Parquet shards in parallel with Ray, resumably, with progress."""

from __future__ import annotations

import json
import time
from typing import Any

from pipelines.data import imbalance
from pipelines.data.decode import DEFAULT_MAX_PIXELS
from pipelines.data.progress import Progress
from pipelines.data.shard_writer import MANIFEST, build_manifest, done_path, write_chunk
from pipelines.data.sources import open_source
from pipelines.data.storage import Store


def prepare_dataset(
    dataset: str,
    root: str,
    out: str,
    splits: list[str] | None = None,
    options: dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_in_flight: int | None = None,
) -> dict[str, Any]:
    """Write ``dataset`` at ``root`` as shards under ``out`` and return the manifest.

    Chunks already completed under ``out`` (by an earlier, possibly crashed run) are kept as
    they are. Uses the Ray cluster this process is connected to (``ray.init`` is called if
    needed, honouring ``RAY_ADDRESS``).

    Args:
        dataset: a source name (``pipelines.data.sources.SOURCES``).
        root: the raw dataset's folder or URI.
        out: the output folder or URI.
        splits: the splits to write (default: all the source has).
        options: source options (e.g. ``variant``, ``devkit``).
        max_pixels: larger images are listed as bad (decompression bombs).
        max_in_flight: tasks submitted at once (default: twice the cluster's CPUs).

    Returns:
        The manifest that was written to ``<out>/manifest.json``.
    """
    import ray

    source = open_source(dataset, root, **(options or {}))
    splits = list(splits or source.splits)
    for split in splits:
        source.check_split(split)
    store = Store.open(out)
    classes = source.classes()
    plan = [chunk for split in splits for chunk in source.chunks(split)]
    done: dict[str, dict[str, Any]] = {}
    for chunk in plan:
        data = store.read(done_path(chunk))
        if data is not None:
            done[done_path(chunk)] = json.loads(data)
    todo = [c for c in plan if done_path(c) not in done]
    print(f"prepare {dataset}: {len(plan)} chunks in {', '.join(splits)}; "
          f"{len(plan) - len(todo)} already written, {len(todo)} to write -> {out}", flush=True)
    if todo:
        if not ray.is_initialized():
            ray.init()
        remote = ray.remote(num_cpus=1)(write_chunk)
        limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
        progress = Progress(f"prepare {dataset}", len(todo))
        pending: dict[Any, str] = {}
        images = bad = 0
        start = time.monotonic()
        queue = list(todo)
        while queue or pending:
            while queue and len(pending) < limit:
                chunk = queue.pop(0)
                pending[remote.remote(source, chunk, store, len(classes), max_pixels)] = done_path(chunk)
            ready, _ = ray.wait(list(pending), num_returns=1)
            record = ray.get(ready[0])
            done[pending.pop(ready[0])] = record
            images += record["rows"]
            bad += len(record["bad_files"])
            rate = images / max(time.monotonic() - start, 1e-9)
            progress.update(1, f"{images:,} images, {bad} bad, {rate:,.0f} img/s")
    manifest = build_manifest(dataset, root, classes, splits, [done[done_path(c)] for c in plan])
    store.write_atomic(json.dumps(manifest, indent=1).encode(), MANIFEST)
    for split, info in manifest["splits"].items():
        ratio = imbalance.ratio_text(info["imbalance_ratio"])
        print(f"  {split}: {info['rows']:,} images in {len(info['shards'])} shards, "
              f"{info['classes_present']} classes, imbalance ratio {ratio}, "
              f"{info['bad_count']} bad", flush=True)
    for entry in manifest["bad_files"][:10]:
        print(f"  bad: {entry['path']}: {entry['reason']}", flush=True)
    if len(manifest["bad_files"]) > 10:
        print(f"  ... {len(manifest['bad_files']) - 10} more bad files listed in {MANIFEST}", flush=True)
    return manifest
