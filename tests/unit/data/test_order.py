"""What a training epoch reads and in what order, and the stratified samples (no Ray)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.data import order
from pipelines.data.shuffle_writer import GUESS_ROWS_PER_CHUNK, ShuffleSettings, gather_plan, plan_split
from pipelines.data.sources.base import Chunk


@pytest.mark.parametrize(
    ("counts", "size", "expected"),
    [
        ([100, 100, 100, 100], 40, [10, 10, 10, 10]),  # exact proportions
        ([500, 300, 200], 10, [5, 3, 2]),
        ([1000, 10, 5, 1], 20, [17, 1, 1, 1]),  # 19.7, 0.2, 0.1, 0.02 -> every class kept once
        ([7, 0, 3], 5, [4, 0, 1]),  # 3.5, 0, 1.5: a tie goes to the earlier class; empty stays empty
        ([3, 2], 100, [3, 2]),  # never more than a class has
        ([50, 1, 1, 1, 1], 3, [3, 0, 0, 0, 0]),  # fewer than the classes: proportional only
    ],
)
def test_allocate_is_proportional_with_one_per_class_where_possible(counts, size, expected):
    take = order.allocate(np.array(counts), size)
    assert take.tolist() == expected
    assert take.sum() == min(size, sum(counts))


def test_stratified_sample_holds_every_class_in_proportion_and_is_seeded():
    rng = np.random.default_rng(0)
    counts = [int(1000 * 0.01 ** (c / 19)) for c in range(20)]  # 1000 down to 10: ratio 100
    labels = rng.permutation(np.repeat(np.arange(20), counts))
    labels = np.r_[labels, [-1] * 50]  # unlabelled rows are never drawn
    picked = order.stratified_sample(labels, 200, seed=5)
    got = np.bincount(labels[picked], minlength=20)
    assert len(picked) == 200 and len(set(picked.tolist())) == 200 and (labels[picked] >= 0).all()
    assert (got >= 1).all()
    share = np.asarray(counts) / sum(counts) * 200  # 9.8 ... 0.1 images
    assert np.all(np.abs(got - np.maximum(share, 1)) <= 1.5)  # in proportion, at least one each
    assert np.array_equal(picked, order.stratified_sample(labels, 200, seed=5))
    assert not np.array_equal(picked, order.stratified_sample(labels, 200, seed=6))


@pytest.mark.parametrize("mix", [1, 3, 4])
def test_every_row_group_is_read_by_exactly_mix_slots_once_per_epoch(mix):
    n = 10
    for epoch in (0, 1):
        seen: dict[int, list[tuple[int, int]]] = {}
        for slot in range(n):
            members, part, parts = order.slot_group(n, mix, seed=1, epoch=epoch, slot=slot)
            assert 0 <= part < parts == len(members) <= mix
            for m in members.tolist():
                seen.setdefault(m, []).append((part, parts))
        # each row group is read by every slot of its mixing group, each keeping a distinct part
        assert sorted(seen) == list(range(n))
        assert all(sorted(p for p, _ in v) == list(range(v[0][1])) for v in seen.values())
    first = [order.slot_group(n, mix, 1, 0, s)[0].tolist() for s in range(n)]
    second = [order.slot_group(n, mix, 1, 1, s)[0].tolist() for s in range(n)]
    assert first != second  # a new order of row groups every epoch
    assert [order.slot_group(n, mix, 1, None, s)[0].tolist() for s in range(0, n, mix)] == [
        list(range(s, min(s + mix, n))) for s in range(0, n, mix)
    ]  # evaluation streams: file order


def test_parts_split_rows_exactly():
    for rows, parts in ((10, 4), (3, 4), (1000, 3)):
        pieces = [list(range(rows))[order.part(rows, i, parts)] for i in range(parts)]
        assert [i for p in pieces for i in p] == list(range(rows))
        assert max(map(len, pieces)) - min(map(len, pieces)) <= 1


def test_rows_per_item_splits_sorted_positions_with_repeats():
    got = order.rows_per_item(np.array([0, 0, 2, 5, 5, 9]), [3, 4, 3])
    assert [g.tolist() for g in got] == [[0, 0, 2], [2, 2], [2]]


def test_the_shuffle_plan_sizes_buckets_and_tasks_from_the_chunks():
    known = [Chunk("train", f"c{i}", (), 5000) for i in range(12)]  # 60,000 rows
    plan = plan_split(known, ShuffleSettings(seed=3, rows_per_shard=10_000))
    assert (plan.seed, plan.buckets, plan.chunks_per_task) == (3, 6, 2)
    unknown = [Chunk("train", f"c{i}", ()) for i in range(50)]
    plan = plan_split(unknown, ShuffleSettings(rows_per_shard=10_000))
    assert plan.buckets == 50 * GUESS_ROWS_PER_CHUNK // 10_000 and plan.chunks_per_task == 10
    plan = plan_split(unknown, ShuffleSettings(rows_per_shard=10_000), min_tasks=8)  # 8 CPU-tasks
    assert plan.chunks_per_task == 7  # ceil(50 / 8): every CPU gets a read task
    plan = plan_split(unknown, ShuffleSettings(rows_per_shard=10_000, chunks_per_task=20), min_tasks=8)
    assert plan.chunks_per_task == 20  # asked for: kept
    with pytest.raises(ValueError, match=r"shuffle\.rows_per_shar is not a setting"):
        ShuffleSettings.from_config({"rows_per_shar": 5})
    with pytest.raises(ValueError, match="rows_per_shard=0"):
        ShuffleSettings.from_config({"rows_per_shard": 0})


def test_gather_tasks_merge_small_buckets_and_split_large_ones():
    sizes = [3, 4, 0, 5, 30, 2, 2, 9]  # rows per bucket; 10 rows per shard
    owners = [[["piece", n]] if n else [] for n in sizes]
    assert gather_plan(owners, 10) == [([0, 1, 2, 3], 1), ([4], 2), ([5, 6, 7], 1)]  # 30 > 2 x 10: 2 parts
    assert sorted(b for bs, _ in gather_plan(owners, 10) for b in bs) == list(range(len(sizes)))


def test_a_small_sample_of_shuffled_row_groups_reads_few_of_them():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 20 * 500)  # 20 row groups of 500 rows in random class order
    picked = order.stratified_sample(labels, 256, seed=3, num_classes=10, group_sizes=[500] * 20)
    groups = set((picked // 500).tolist())
    assert len(picked) == 256 and len(groups) == 1  # one row group holds every class's share
    expected = order.allocate(np.bincount(labels), 256).tolist()
    assert np.bincount(labels[picked], minlength=10).tolist() == expected
    sorted_labels = np.sort(labels)  # class-sorted row groups: every class's groups are needed
    picked = order.stratified_sample(sorted_labels, 256, seed=3, num_classes=10, group_sizes=[500] * 20)
    assert (np.bincount(sorted_labels[picked], minlength=10) >= 1).all()


def test_a_limited_training_set_keeps_the_unlabelled_share_and_every_class() -> None:
    labels = np.array([-1] * 600 + [c for c in range(4) for _ in range(100)])  # 60 % unlabelled
    kept = order.training_sample(labels, 100, seed=3, num_classes=4)
    assert len(kept) == len(set(kept.tolist())) == 100 and (np.diff(kept) > 0).all()
    assert (labels[kept] < 0).sum() == 60
    assert np.bincount(labels[kept][labels[kept] >= 0], minlength=4).tolist() == [10, 10, 10, 10]
    assert np.array_equal(kept, order.training_sample(labels, 100, seed=3, num_classes=4))
    assert not np.array_equal(kept, order.training_sample(labels, 100, seed=4, num_classes=4))
    plain = np.repeat(np.arange(4), 100)
    assert np.array_equal(order.training_sample(plain, 40, 3, 4), order.stratified_sample(plain, 40, 3, 4))
