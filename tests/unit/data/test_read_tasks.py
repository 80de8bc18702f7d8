"""Read slots: every row of an epoch read once, whatever physical types each shard was written with."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipelines.core.storage import Store
from pipelines.data.read_tasks import ReadPlan, read_slot
from pipelines.data.shard_writer import parquet_bytes


def write_shards(folder) -> tuple[list[dict], dict[str, tuple[bytes, int]]]:
    """Two shards of 3 row groups x 5 rows written with different Arrow types (and one without keys).

    Returns the plan's items and the expected ``key -> (bytes, label)`` of every row.
    """
    items, expected = [], {}
    specs = [
        ("a.parquet", pa.binary(), pa.int64(), True),
        ("b.parquet", pa.large_binary(), pa.int32(), False),
    ]
    for name, image_type, label_type, keyed in specs:
        path = str(folder / name)
        images = [f"{name}-{i}".encode() * (i + 1) for i in range(15)]
        labels = [(7 * i) % 10 for i in range(15)]
        columns = {"image": pa.array(images, image_type), "label": pa.array(labels, label_type)}
        if keyed:
            columns["key"] = pa.array([f"{name}/img{i}" for i in range(15)])
        pq.write_table(pa.table(columns), path, row_group_size=5)
        for i in range(15):
            key = f"{name}/img{i}" if keyed else f"{path}#{i // 5}:{i % 5}"
            expected[key] = (images[i], labels[i])
        items += [{"file": path, "row_group": g} for g in range(3)]
    return items, expected


def test_mixed_slots_read_every_row_once_with_its_bytes_label_and_key(tmp_path):
    items, expected = write_shards(tmp_path)
    store = Store.open("/")
    for epoch in (0, 1):
        plan = ReadPlan(items, mix=4, shuffle=True, seed=3)
        seen = {}
        for slot in range(plan.slots):
            rows = read_slot(store, plan, slot, epoch)
            assert rows["label"].dtype == np.int64
            for key, data, label in zip(rows["key"], rows["image"], rows["label"], strict=True):
                assert key not in seen
                seen[key] = (data, int(label))
        assert seen == expected


def test_chosen_rows_are_taken_with_repeats_and_in_order(tmp_path):
    items, expected = write_shards(tmp_path)
    item = {**items[4], "rows": [3, 0, 3]}  # b.parquet, row group 1: repeats allowed (resampling)
    rows = read_slot(Store.open("/"), ReadPlan([item]), 0, 0)
    keys = [f"{tmp_path / 'b.parquet'}#1:{i}" for i in (3, 0, 3)]
    assert rows["key"].tolist() == keys
    assert rows["image"].tolist() == [expected[k][0] for k in keys]
    assert rows["label"].tolist() == [expected[k][1] for k in keys]


def test_prepared_row_groups_hold_about_8_mib_of_images_between_16_and_1000_rows(tmp_path):
    """The unit of a read task: 1,000 small images, ~80 ImageNet-sized photos, never fewer than 16."""
    for image_bytes, rows, expected in ((2_500, 3_000, 1000), (100_000, 300, 83), (4_000_000, 40, 16)):
        table = pa.table({"image": [b"x" * image_bytes] * rows, "label": [0] * rows, "key": ["k"] * rows})
        path = tmp_path / f"{image_bytes}.parquet"
        path.write_bytes(parquet_bytes(table))
        meta = pq.ParquetFile(path).metadata
        assert meta.row_group(0).num_rows == expected
        assert sum(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) == rows
