"""Class-sorted data through ``prepare`` and the training feed: mixed batches, a new order every
epoch, every image once, representative banks (real JPEGs of the bundled CIFAR-10 sample)."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import ray

from pipelines.core.config_schema import with_defaults
from pipelines.core.storage import Store
from pipelines.data import shuffle_writer as sw
from pipelines.data.loader import training_datasets
from pipelines.data.monitor import monitor
from pipelines.data.prepare import prepare_dataset
from pipelines.data.read_tasks import ReadPlan, read_slot, row_id
from pipelines.data.recipes import view_recipes
from pipelines.data.shard_index import index_shards, with_rows
from pipelines.data.shuffle_writer import ShuffleSettings
from pipelines.data.sources import open_source
from tests.helpers.runs import ROOT

pytestmark = pytest.mark.timeout(600)  # about a minute each here; room for a slower, busier machine
SAMPLE = ROOT / "data" / "cifar10-sample" / "train-00000-of-00001.parquet"
BATCH = 32


def class_sorted_tree(root: Path, per_class: list[int], val_per_class: int = 3) -> dict[str, int]:
    """An ImageFolder tree (``train/`` and ``val/``) of real CIFAR JPEGs; folder ``cNN`` holds class NN.

    Class ``c`` takes images of CIFAR class ``c % 10``, none used twice. Returns ``{file key: label}``
    of the training images.
    """
    table = pq.read_table(SAMPLE, columns=["image", "label"]).to_pydict()
    pool: dict[int, list[bytes]] = {}
    for data, label in zip(table["image"], table["label"], strict=True):
        pool.setdefault(label, []).append(data)
    keys = {}
    for c, n in enumerate(per_class):
        for split, count in (("train", n), ("val", val_per_class)):
            folder = root / split / f"c{c:02d}"
            folder.mkdir(parents=True)
            for i in range(count):
                (folder / f"{split}{i:03d}.jpg").write_bytes(pool[c % 10].pop())
                if split == "train":
                    keys[f"train/c{c:02d}/train{i:03d}.jpg"] = c
    return keys


def feed_cfg(root: Path, **extra) -> dict:
    return with_defaults(
        "dataset",
        {
            "name": "shards",
            "root": str(root),
            "train_split": "train",
            "eval_split": "val",
            "imbalance": {"rule": "none"},
            "max_bad_fraction": 0.01,
            "mix_row_groups": 4,
            **extra,
        },
    )


def read_epoch_like_train_workers(dataset, workers: int = 2) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """One epoch split across ``workers`` consumers the way Ray Train splits it; batches per worker."""
    shards = dataset.streaming_split(workers, equal=True)
    got: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(workers)]

    def consume(rank: int) -> None:
        for batch in shards[rank].iter_batches(batch_size=BATCH, batch_format="numpy", drop_last=False):
            got[rank].append((batch["label"], batch["row"]))

    threads = [threading.Thread(target=consume, args=(r,)) for r in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    return got


def expected_distinct(counts: list[int], batch: int) -> float:
    """Mean distinct classes in a uniformly random batch: sum over classes of 1 - (1 - p_c)^B."""
    p = np.asarray(counts, dtype=np.float64) / sum(counts)
    return float(np.sum(1.0 - (1.0 - p) ** batch))


@pytest.fixture(scope="module", params=["balanced", "imbalanced"])
def prepared(request, ray_cluster, tmp_path_factory):
    """A class-sorted tree of 20 classes (100 each, or 100 down to 10) prepared with the shuffle."""
    tmp = tmp_path_factory.mktemp(request.param)
    per_class = [100] * 20 if request.param == "balanced" else [int(100 * 0.1 ** (c / 19)) for c in range(20)]
    keys = class_sorted_tree(tmp / "raw", per_class)
    manifest = prepare_dataset(
        "imagefolder", str(tmp / "raw"), str(tmp / "out"), shuffle=ShuffleSettings(seed=7, rows_per_shard=500)
    )
    return {"out": tmp / "out", "keys": keys, "per_class": per_class, "manifest": manifest}


def test_prepare_writes_one_random_order_with_exact_counts(prepared):
    manifest, per_class = prepared["manifest"], prepared["per_class"]
    train = manifest["splits"]["train"]
    assert train["order"] == "shuffled" and train["shuffle"]["seed"] == 7 and manifest["shuffle"]["seed"] == 7
    assert train["per_class"] == per_class and train["rows"] == sum(per_class)
    assert manifest["splits"]["val"]["order"] == "source"  # evaluation splits keep the source order
    labels = np.concatenate(
        [pq.read_table(prepared["out"] / s["file"])["label"].to_numpy() for s in train["shards"]]
    )
    assert len(labels) == sum(per_class) and len(train["shards"]) > 1
    runs = 1 + int(np.count_nonzero(np.diff(labels)))  # class-sorted shards would give 20 runs
    assert runs > 0.8 * (len(labels) * (1 - np.sum((np.asarray(per_class) / len(labels)) ** 2)))
    keys = [k for s in train["shards"] for k in pq.read_table(prepared["out"] / s["file"])["key"].to_pylist()]
    assert sorted(keys) == sorted(prepared["keys"])  # every image once
    assert not (prepared["out"] / "train" / "_scatter").exists() or not any(
        (prepared["out"] / "train" / "_scatter").rglob("*.parquet")
    )


def test_one_epoch_read_by_two_workers_has_mixed_batches_and_every_image_once(prepared):
    mon = monitor("shuffle-feed", max_bad_fraction=0.5)
    data = training_datasets(
        feed_cfg(prepared["out"]), view_recipes("cifar", 2), eval_size=32, seed=3, run="shuffle-feed"
    )
    ids = {row_id(k): c for k, c in prepared["keys"].items()}
    sequences = []
    for epoch in (0, 1):
        ray.get(mon.set_epoch.remote(epoch))
        got = read_epoch_like_train_workers(data.datasets["train"])
        rows = [int(r) for worker in got for _, batch in worker for r in batch]
        # every image once across the workers; an equal split leaves out the last N mod workers
        assert len(set(rows)) == len(rows) and set(rows) <= set(ids) and len(ids) - len(rows) == len(ids) % 2
        for worker in got:
            for labels, batch_rows in worker:
                assert [ids[int(r)] for r in batch_rows] == labels.tolist()
        full = [labels for worker in got for labels, _ in worker if len(labels) == BATCH]
        distinct = float(np.mean([len(set(b.tolist())) for b in full]))
        expected = expected_distinct(prepared["per_class"], BATCH)
        print(f"epoch {epoch}: {distinct:.2f} distinct classes per batch; uniform batches: {expected:.2f}")
        assert distinct >= 0.9 * expected
        sequences.append(rows)
    assert sequences[0] != sequences[1]


def epoch_rows(out: Path, epoch: int, seed: int, mix: int = 4) -> list[str]:
    """The keys one epoch's read slots give, in slot order (what the stream yields in order)."""
    source = open_source("shards", str(out))
    index = index_shards(source, "train")
    plan = ReadPlan(with_rows(index, np.arange(len(index.labels))), mix, shuffle=True, seed=seed)
    return [str(k) for slot in range(plan.slots) for k in read_slot(source.store, plan, slot, epoch)["key"]]


def test_each_epoch_has_its_own_order_and_the_same_seed_gives_the_same_one(prepared):
    first, second = epoch_rows(prepared["out"], 0, seed=3), epoch_rows(prepared["out"], 1, seed=3)
    assert sorted(first) == sorted(second) == sorted(prepared["keys"])  # each image once per epoch
    assert first != second
    assert epoch_rows(prepared["out"], 1, seed=3) == second
    assert epoch_rows(prepared["out"], 1, seed=4) != second


def test_the_bank_is_a_class_stratified_sample(prepared):
    per_class = prepared["per_class"]
    data = training_datasets(
        feed_cfg(prepared["out"]), view_recipes("cifar", 2), eval_size=32, seed=0, bank_size=60
    )
    labels = np.concatenate([b["label"] for b in data.datasets["bank"].iter_batches(batch_format="numpy")])
    counts = np.bincount(labels, minlength=20)
    assert len(labels) == 60 and (counts >= 1).all()  # every class, however small
    share = np.asarray(per_class) / sum(per_class) * 60
    assert np.abs(counts - np.maximum(share, 1)).max() <= 2  # in proportion to the class sizes


def test_old_class_sorted_shards_warn_and_still_get_a_new_order_each_epoch(ray_cluster, tmp_path, capsys):
    keys = class_sorted_tree(tmp_path / "raw", [100] * 20)
    prepare_dataset(
        "imagefolder", str(tmp_path / "raw"), str(tmp_path / "out"), shuffle=ShuffleSettings(enabled=False)
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["order"] == "source" and "shuffle" not in manifest
    training_datasets(feed_cfg(tmp_path / "out"), view_recipes("cifar", 2), eval_size=32)
    assert "prepared without a shuffle seed" in capsys.readouterr().out
    first, second = epoch_rows(tmp_path / "out", 0, seed=0), epoch_rows(tmp_path / "out", 1, seed=0)
    assert sorted(first) == sorted(second) == sorted(keys) and first != second
    labels = [int(k.split("/")[1][1:]) for k in first[: BATCH * 10]]
    assert len(set(labels)) > 1  # the rows of several class-sorted row groups are mixed


def shard_keys(out: Path) -> list[str]:
    manifest = json.loads((out / "manifest.json").read_text())
    shards = manifest["splits"]["train"]["shards"]
    return [k for s in shards for k in pq.read_table(out / s["file"])["key"].to_pylist()]


def test_an_interrupted_shuffled_prepare_resumes_to_the_same_shards(ray_cluster, tmp_path):
    """A crash mid-gather leaves every scatter record, one gathered bucket and the others' pieces.

    The state is built with the stages' own functions; the re-run must keep what exists (files
    untouched) and end with the same shards, in the same order, as an uninterrupted prepare.
    """
    class_sorted_tree(tmp_path / "raw", [40] * 6, val_per_class=1)
    settings = ShuffleSettings(seed=11, rows_per_shard=60)  # 6 folders guessed at 6,000 rows: 100 buckets
    clean = prepare_dataset("imagefolder", str(tmp_path / "raw"), str(tmp_path / "clean"), shuffle=settings)
    assert clean["splits"]["train"]["shuffle"]["buckets"] == 100
    assert 3 <= len(clean["splits"]["train"]["shards"]) <= 5  # the 240 rows in shards of about 60

    source, out = open_source("imagefolder", str(tmp_path / "raw")), Store.open(tmp_path / "crashed")
    chunks = source.chunks("train")
    plan, _ = sw.load_or_save_plan(out, "train", sw.plan_split(chunks, settings))
    groups = sw.task_groups(chunks, plan.chunks_per_task)
    records = [sw.scatter(source, g, out, 6, 64_000_000, plan) for g in groups]
    owners = sw.bucket_pieces(records, plan.buckets)
    tasks = sw.gather_plan(owners, plan.rows_per_shard)
    (first, parts), *_ = tasks
    sw.gather(out, "train", first, [owners[b] for b in first], parts, plan)
    kept = {p: p.stat().st_mtime_ns for p in (tmp_path / "crashed" / "train").rglob("*") if p.is_file()}
    print(f"injected: {len(records)} scatter records, gather task 1 of {len(tasks)} done, the rest not")

    again = prepare_dataset("imagefolder", str(tmp_path / "raw"), str(tmp_path / "crashed"), shuffle=settings)
    untouched = [p for p, t in kept.items() if p.exists() and p.stat().st_mtime_ns == t]
    assert len(untouched) == len([p for p in kept if "_scatter" not in str(p)])  # gathered pieces go
    assert shard_keys(tmp_path / "crashed") == shard_keys(tmp_path / "clean")
    assert again["splits"]["train"]["per_class"] == clean["splits"]["train"]["per_class"] == [40] * 6
    assert not list((tmp_path / "crashed" / "train").rglob("_scatter/*/*.parquet"))


def test_a_bucket_larger_than_planned_is_written_in_parts_with_bounded_rows(tmp_path):
    """The plan wants 50 rows per shard in one bucket; three chunks of 120 rows come: the scatter
    task writes its rows out every 50, and the bucket becomes shards of about 2 x 50 rows at most."""
    keys = class_sorted_tree(tmp_path / "raw", [120, 120, 120], val_per_class=0)
    source, out = open_source("imagefolder", str(tmp_path / "raw")), Store.open(tmp_path / "out")
    plan = sw.ShufflePlan(seed=2, buckets=1, chunks_per_task=3, rows_per_shard=50)
    record = sw.scatter(source, source.chunks("train"), out, 3, 64_000_000, plan)
    assert [n for _, n in record["pieces"]["0"]] == [50] * 7 + [10]  # written every 50 rows
    owners = sw.bucket_pieces([record], 1)
    assert sw.gather_plan(owners, 50) == [([0], 4)]
    done = sw.gather(out, "train", [0], owners, 4, plan)
    sizes = [f["rows"] for f in done["files"]]
    print(f"observed: a 360-row bucket written as {len(sizes)} shards of {sizes} rows")
    assert len(sizes) == 4 and sum(sizes) == 360 and max(sizes) < 2 * 2 * 50  # 360 / (2 x 50) -> 4 parts
    tables = [pq.read_table(tmp_path / "out" / f["file"]) for f in done["files"]]
    written = [k for t in tables for k in t["key"].to_pylist()]
    assert sorted(written) == sorted(keys)
    labels = [int(k.split("/")[1][1:]) for k in written]
    assert 1 + int(np.count_nonzero(np.diff(labels))) > 0.5 * 360 * (1 - 3 * (1 / 3) ** 2)  # mixed
