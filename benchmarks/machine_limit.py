"""The machine's limit for the training feed's work: the same read, decode and crop code with no framework.

Used by ``benchmarks/data.py``:

* :func:`limit_epoch`: every batch read, decoded (``decode_image``) and cropped
  (``crop_views``) in a tight loop by ``processes`` forked processes of one thread each, sharing
  the batches out in turn. Nothing is sent anywhere: the figure is what the pipelines' own
  functions can reach on this machine, and each pipeline is reported as a fraction of it.
* :func:`per_photo_ms`: where one process's time goes per image (read, decode, crop), so the
  levers can be judged against the part of the work they touch.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import torch

from pipelines.data.augment import crop_views
from pipelines.data.decode import decode_image


def _row_groups(files: list[str]) -> list[tuple[str, int]]:
    return [(f, g) for f in files for g in range(pq.ParquetFile(f).num_row_groups)]


def _work(
    groups: list[tuple[str, int]], recipes: list, batch: int, draft, part: int, parts: int
) -> tuple[int, float]:
    """Read, decode and crop every ``parts``-th batch of ``groups``; (images, seconds)."""
    torch.set_num_threads(1)
    rng = np.random.default_rng(part)
    start, n, k = time.perf_counter(), 0, 0
    for path, group in groups:
        images = pq.ParquetFile(path).read_row_group(group, columns=["image"])["image"]
        for b in range(0, len(images), batch):
            k += 1
            if k % parts == part:
                pixels = [decode_image(data, draft=draft)[0] for data in images[b : b + batch].to_pylist()]
                n += len(crop_views(pixels, recipes, rng)["views"])
    return n, time.perf_counter() - start


def _child(queue: Any, groups, recipes, batch, draft, part, parts) -> None:
    queue.put(_work(groups, recipes, batch, draft, part, parts))


def limit_epoch(files: list[str], recipes: list, batch: int, draft, processes: int = 2) -> dict:
    """One pass over ``files`` in ``processes`` forked processes: images/s summed over the processes.

    The processes are forked with everything imported, and each times its own loop, so start-up
    is left out: the figure is the work's own rate, the ceiling for every pipeline.
    """
    groups = _row_groups(files)
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [
        ctx.Process(target=_child, args=(queue, groups, recipes, batch, draft, i, processes))
        for i in range(processes)
    ]
    for p in procs:
        p.start()
    results = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    images = sum(n for n, _ in results)
    return {
        "images": images,
        "img_per_s": sum(n / s for n, s in results if s > 0),
        "first_batch_s": 0.0,
        "peak_mem_mb": float("nan"),
    }


def per_photo_ms(files: list[str], recipes: list, draft, images: int = 64) -> dict[str, float]:
    """Milliseconds per image in one warm process: reading its bytes, decoding, and cropping its views."""
    torch.set_num_threads(1)
    path, group = _row_groups(files)[0]
    for _ in range(2):  # the first pass warms caches and allocators; the second is timed
        t0 = time.perf_counter()
        data = pq.ParquetFile(path).read_row_group(group, columns=["image"])["image"][:images].to_pylist()
        t1 = time.perf_counter()
        pixels = [decode_image(d, draft=draft)[0] for d in data]
        t2 = time.perf_counter()
        crop_views(pixels, recipes, np.random.default_rng(0))
        t3 = time.perf_counter()
    n = len(data)
    return {
        "read_ms": 1e3 * (t1 - t0) / n,
        "decode_ms": 1e3 * (t2 - t1) / n,
        "crop_ms": 1e3 * (t3 - t2) / n,
        "height": float(np.median([p.shape[0] for p in pixels])),
        "width": float(np.median([p.shape[1] for p in pixels])),
    }
