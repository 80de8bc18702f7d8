"""Converting a source into Parquet shards in parallel with Ray, resumably, with progress."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

from pipelines.core.progress import Progress
from pipelines.core.storage import Store
from pipelines.data import imbalance
from pipelines.data import shuffle_writer as sw
from pipelines.data.decode import DEFAULT_MAX_PIXELS
from pipelines.data.shard_writer import MANIFEST, UNREADABLE, build_manifest, done_path, write_chunk
from pipelines.data.shuffle_writer import ShuffleSettings
from pipelines.data.sources import open_source
from pipelines.data.sources.folders import IMAGE_SUFFIXES
from pipelines.data.sources.holdout import HoldOut, HoldOutSettings


def run_tasks(
    label: str, calls: list[tuple[Any, tuple[Any, ...]]], max_in_flight: int | None
) -> list[dict[str, Any]]:
    """Run ``(remote function, args)`` calls on Ray, at most ``max_in_flight`` at once, with progress.

    Returns:
        The tasks' records, in the order of ``calls``.
    """
    import ray

    if not calls:
        return []
    if not ray.is_initialized():
        ray.init()
    limit = max_in_flight or max(2, 2 * int(ray.cluster_resources().get("CPU", 1)))
    progress = Progress(label, len(calls), unit="tasks")
    results: list[dict[str, Any] | None] = [None] * len(calls)
    pending: dict[Any, int] = {}
    images = bad = 0
    start, queue = time.monotonic(), list(enumerate(calls))
    while queue or pending:
        while queue and len(pending) < limit:
            i, (fn, args) = queue.pop(0)
            pending[fn.remote(*args)] = i
        ready, _ = ray.wait(list(pending), num_returns=1)
        record = results[pending.pop(ready[0])] = ray.get(ready[0])
        images += record["rows"]
        bad += len(record.get("bad_files", []))
        rate = images / max(time.monotonic() - start, 1e-9)
        progress.update(1, f"{images:,} images, {bad} bad, {rate:,.0f} img/s")
    return [r for r in results if r is not None]


def _read_records(store: Store, paths: list[str]) -> dict[str, dict[str, Any]]:
    """The completion records that exist among ``paths``."""
    found = {}
    for path in paths:
        data = store.read(path)
        if data is not None:
            found[path] = json.loads(data)
    return found


def _write_shuffled(
    source: Any,
    split: str,
    chunks: list[Any],
    store: Store,
    num_classes: int,
    max_pixels: int,
    settings: ShuffleSettings,
    max_in_flight: int | None,
    label: str,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Both shuffle stages of one split's ``chunks``: (scatter records, its manifest shuffle info)."""
    import ray

    if not ray.is_initialized():
        ray.init()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    plan, kept = sw.load_or_save_plan(store, split, sw.plan_split(chunks, settings, min_tasks=2 * cpus))
    if kept and plan.seed != int(settings.seed):
        print(
            f"  {split}: resuming with the shuffle seed {plan.seed} an earlier run fixed "
            f"(shuffle.seed={settings.seed} applies to a new out folder)",
            flush=True,
        )
    groups = sw.task_groups(chunks, plan.chunks_per_task)
    paths = [sw.scatter_done_path(split, g) for g in groups]
    done = _read_records(store, paths)
    todo = [g for g, p in zip(groups, paths, strict=True) if p not in done]
    print(
        f"  {split}: shuffle seed {plan.seed}, {plan.buckets} bucket(s); read stage: {len(groups)} "
        f"task(s) of {plan.chunks_per_task} chunk(s), {len(groups) - len(todo)} already done",
        flush=True,
    )
    remote = ray.remote(num_cpus=1)(sw.scatter)
    calls = [(remote, (source, g, store, num_classes, max_pixels, plan)) for g in todo]
    for g, record in zip(todo, run_tasks(f"{label} {split} read+scatter", calls, max_in_flight), strict=True):
        done[sw.scatter_done_path(split, g)] = record
    records = [done[p] for p in paths]
    owners = sw.bucket_pieces(records, plan.buckets)
    tasks = sw.gather_plan(owners, plan.rows_per_shard)
    paths = [sw.gather_done_path(split, bs[0]) for bs, _ in tasks]
    shards = _read_records(store, paths)
    left = [(bs, parts) for (bs, parts), p in zip(tasks, paths, strict=True) if p not in shards]
    remote = ray.remote(num_cpus=1)(sw.gather)
    calls = [(remote, (store, split, bs, [owners[b] for b in bs], parts, plan)) for bs, parts in left]
    written = run_tasks(f"{label} {split} shuffle+write", calls, max_in_flight)
    for (bs, _), record in zip(left, written, strict=True):
        shards[sw.gather_done_path(split, bs[0])] = record
    listed = [shards[p] for p in paths]
    with contextlib.suppress(OSError):  # pieces left by a gather task that died after its record
        store.fs.delete_dir(store.path(f"{split}/_scatter"))
    info = {**asdict(plan), "shards": [f for r in listed for f in r["files"]]}
    return records, info


JOB = "_prepare_job.json"  # what wrote the shards under out: a re-run must be the same job to resume


def claim_out_folder(store: Store, out: str, job: dict[str, Any]) -> None:
    """Record ``job`` under ``out``, or refuse when ``out`` holds another prepare's shards.

    A re-run resumes by keeping every piece whose completion record exists, so a different input
    written into the same folder would mix the old shards into the new manifest. A folder written
    before this record existed is taken as the same job.

    Raises:
        ValueError: naming each setting that differs, before any work.
    """
    saved = store.read(JOB)
    if saved is not None:
        old = json.loads(saved)
        keys = [*job, *(k for k in old if k not in job)]  # a setting only one of them has differs too
        diff = [f"{k}: {_shown(old, k)} -> {_shown(job, k)}" for k in keys if old.get(k) != job.get(k)]
        if diff:
            raise ValueError(
                f"out={out} holds the shards of another prepare: {'; '.join(diff)}. A re-run into the "
                f"same folder only resumes the same job; write to a new out folder, or delete {out} "
                "to start over"
            )
        return
    store.write_atomic(json.dumps(job, indent=1).encode(), JOB)


def _shown(job: dict[str, Any], key: str) -> str:
    return repr(job[key]) if key in job else "not set"


def prepare_dataset(
    dataset: str,
    root: str,
    out: str,
    splits: list[str] | None = None,
    options: dict[str, Any] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_in_flight: int | None = None,
    shuffle: ShuffleSettings | None = None,
    holdout: HoldOutSettings | None = None,
    before_ray: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Write ``dataset`` at ``root`` as shards under ``out`` and return the manifest.

    Training splits are written in one seeded random order over the whole split
    (:mod:`pipelines.data.shuffle_writer`); ``val``/``test`` splits, and every split with
    ``shuffle.enabled`` false, as one shard per chunk in the source's order. Work completed under
    ``out`` by an earlier, possibly crashed run of the same job is kept as it is; ``out`` holding
    another input's shards is refused (:func:`claim_out_folder`). Uses the Ray cluster this process
    is connected to (``ray.init`` is called if needed, honouring ``RAY_ADDRESS``).

    Args:
        dataset: a source name (``pipelines.data.sources.SOURCES``).
        root: the raw dataset's folder or URI.
        out: the output folder or URI.
        splits: the splits to write (default: all the source has).
        options: source options (e.g. ``variant``, ``devkit``).
        max_pixels: larger images are listed as bad (decompression bombs).
        max_in_flight: tasks submitted at once (default: twice the cluster's CPUs).
        shuffle: the write-time shuffle (default: on, seed 0).
        holdout: divide one split into ``train`` and a held-out split
            (:mod:`pipelines.data.sources.holdout`); the held-out split is written like a training
            split (consolidated shards, one random order) unless ``shuffle.enabled`` is false.
        before_ray: called once the layout is read and ``out`` is claimed, before any Ray work
            (the command connects to its cluster there: a refusal comes before Ray starts).

    Returns:
        The manifest that was written to ``<out>/manifest.json``.
    """
    import ray

    shuffle = shuffle or ShuffleSettings()
    holdout = holdout or HoldOutSettings()
    source = open_source(dataset, root, **(options or {}))
    if holdout.enabled:
        source = HoldOut(source, holdout)
    splits = list(splits or source.splits)
    for split in splits:
        source.check_split(split)
    store = Store.open(out)
    classes = source.classes()
    chunks = {split: source.chunks(split) for split in splits}  # every split's layout checked first
    job = {"dataset": dataset, "dataset.root": root, "options": dict(options or {}), "classes": list(classes)}
    job |= {"max_pixels": int(max_pixels), **{f"shuffle.{k}": v for k, v in asdict(shuffle).items()}}
    if holdout.enabled:
        job |= {f"holdout.{k}": v for k, v in asdict(holdout).items()}
    claim_out_folder(store, out, job)
    if before_ray is not None:
        before_ray()

    def shuffled_split(split: str) -> bool:  # a held-out split's chunks are small: consolidate them
        return shuffle.applies_to(split) or (shuffle.enabled and holdout.enabled and split == holdout.to)

    plain = [chunk for split in splits if not shuffled_split(split) for chunk in chunks[split]]
    done = _read_records(store, [done_path(c) for c in plain])
    todo = [c for c in plain if done_path(c) not in done]
    print(f"prepare {dataset} -> {out}: {', '.join(splits)}", flush=True)
    if holdout.enabled:
        print(
            f"  holding out about {holdout.fraction:.1%} of {source.divided!r} as {holdout.to!r} "
            f"(seed {holdout.seed}); the rest is written as 'train'",
            flush=True,
        )
    records: list[dict[str, Any]] = []
    shuffled: dict[str, dict[str, Any]] = {}
    for split in splits:
        if shuffled_split(split):
            records_split, shuffled[split] = _write_shuffled(
                source,
                split,
                chunks[split],
                store,
                len(classes),
                max_pixels,
                shuffle,
                max_in_flight,
                f"prepare {dataset}",
            )
            records += records_split
    if plain:
        print(
            f"  {', '.join(s for s in splits if not shuffled_split(s))}: {len(plain)} chunk(s) in "
            f"source order, {len(plain) - len(todo)} already written",
            flush=True,
        )
        remote = ray.remote(num_cpus=1)(write_chunk)
        calls = [(remote, (source, c, store, len(classes), max_pixels)) for c in todo]
        for chunk, record in zip(todo, run_tasks(f"prepare {dataset}", calls, max_in_flight), strict=True):
            done[done_path(chunk)] = record
        records += [done[done_path(c)] for c in plain]
    manifest = build_manifest(dataset, root, classes, splits, records, shuffled)
    if holdout.enabled:
        manifest["holdout"] = {**asdict(holdout), "split": source.divided}
    store.write_atomic(json.dumps(manifest, indent=1).encode(), MANIFEST)
    for split, info in manifest["splits"].items():
        ratio = imbalance.ratio_text(info["imbalance_ratio"])
        broken = info["unreadable_files"]
        cut = f", {broken} file(s) read only up to an error" if broken else ""
        print(
            f"  {split}: {info['rows']:,} images in {len(info['shards'])} shards ({info['order']} order), "
            f"{info['classes_present']} classes, imbalance ratio {ratio}, "
            f"{info['bad_count'] - broken} bad{cut}",
            flush=True,
        )
    warn_skipped_files(manifest)
    for entry in manifest["bad_files"][:10]:
        print(f"  bad: {entry['path']}: {entry['reason']}", flush=True)
    if len(manifest["bad_files"]) > 10:
        print(f"  ... {len(manifest['bad_files']) - 10} more bad files listed in {MANIFEST}", flush=True)
    warn_unreadable(manifest, out)
    warn_empty_classes(manifest)
    warn_unread_entries(source)
    empty = [split for split, info in manifest["splits"].items() if not info["rows"]]
    if empty:
        raise ValueError(
            f"prepare {dataset}: no image was read for split(s) {', '.join(empty)} under {root} "
            f"({len(manifest['bad_files'])} bad files in all; the manifest is in {out}): check that "
            f"dataset={dataset} is the format of those files; in class folders an image file needs one "
            f"of the extensions {', '.join(IMAGE_SUFFIXES)} (any case)"
        )
    return manifest


def warn_skipped_files(manifest: dict[str, Any]) -> None:
    """A line per split naming the files not taken for images (by extension): renamed images show."""
    for split, info in manifest["splits"].items():
        skipped = info.get("skipped_files") or {}
        if skipped:
            kinds = ", ".join(f"{ext} {n:,}" for ext, n in list(skipped.items())[:8])
            more = f" and {len(skipped) - 8} more kinds" if len(skipped) > 8 else ""
            print(
                f"  {split}: skipped {sum(skipped.values()):,} file(s) without an image extension "
                f"({kinds}{more}); an image needs one of {', '.join(IMAGE_SUFFIXES)} (any case)",
                flush=True,
            )


def warn_unread_entries(source: Any) -> None:
    """A warning naming the folders and images under the root that no split reads (not written)."""
    unread = source.unread_entries()
    if unread:
        names = ", ".join(unread[:10]) + (f" and {len(unread) - 10} more" if len(unread) > 10 else "")
        print(
            f"WARNING: {len(unread)} folder(s) or image(s) beside the split folders under {source.root} "
            f"are not read: {names}; images belong in <root>/<split>/<class>/: move them into a split "
            "folder, or prepare them on their own",
            flush=True,
        )


def warn_empty_classes(manifest: dict[str, Any]) -> None:
    """A warning naming the classes of a split that have no image (an empty class folder)."""
    classes = manifest["classes"]
    for split, info in manifest["splits"].items():
        empty = [classes[i] for i, n in enumerate(info["per_class"]) if not n and i < len(classes)]
        if empty and info["rows"]:
            names = ", ".join(repr(c) for c in empty[:10]) + (" ..." if len(empty) > 10 else "")
            print(f"WARNING: {split}: {len(empty)} class(es) without any image: {names}", flush=True)


def warn_unreadable(manifest: dict[str, Any], out: str) -> None:
    """A warning naming every raw file read only up to an error (the images after it are missing)."""
    broken = [b for b in manifest["bad_files"] if b["reason"].startswith(UNREADABLE)]
    if not broken:
        return
    print(
        f"WARNING: {len(broken)} raw file(s) could not be read to the end; the images after each error "
        "are not in the shards and not counted as bad:",
        flush=True,
    )
    for entry in broken[:20]:
        print(f"  {entry['path']}: {entry['reason'][len(UNREADABLE) :]}", flush=True)
    print(
        f"  Replace or repair them, then prepare into a new out folder (or delete {out}): a re-run keeps "
        "what it wrote for them",
        flush=True,
    )
